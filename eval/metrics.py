"""BEIR-standard metrics through pytrec_eval, with trec_eval semantics.

Names follow BEIR's reporting: ``ndcg@10`` is trec_eval ``ndcg_cut_10``, ``recall@100`` is
``recall_100``, ``map@100`` is ``map_cut_100`` and ``mrr@10`` is ``recip_rank`` over the top 10.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import pytrec_eval

Run = Mapping[str, Mapping[str, float]]
DEFAULT_METRICS = ("ndcg@10", "recall@100", "map@100", "mrr@10")

# our name -> (trec_eval measure, result key, cutoff applied to the run before scoring or None)
_MEASURES: dict[str, tuple[str, str, int | None]] = {}
for _k in (1, 3, 5, 10, 100, 1000):
    _MEASURES[f"ndcg@{_k}"] = (f"ndcg_cut.{_k}", f"ndcg_cut_{_k}", None)
    _MEASURES[f"recall@{_k}"] = (f"recall.{_k}", f"recall_{_k}", None)
    _MEASURES[f"map@{_k}"] = (f"map_cut.{_k}", f"map_cut_{_k}", None)
    _MEASURES[f"p@{_k}"] = (f"P.{_k}", f"P_{_k}", None)
    _MEASURES[f"mrr@{_k}"] = ("recip_rank", "recip_rank", _k)


def _top(run: Mapping[str, float], k: int | None) -> dict[str, float]:
    if k is None or len(run) <= k:
        return dict(run)
    # trec_eval orders by score desc, then docid desc; cut the same way.
    ranked = sorted(run.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    return dict(ranked[:k])


# BEIR drops hits whose doc id equals the query id (``ignore_identical_ids``). Right for collections
# where a query is also a document (quora, arguana), wrong where query and document ids are both small
# integers and a genuine relevant pair can share an id. ``trident eval beir --keep-identical-ids``
# turns it off for everything scored in the command (tuning included) through this context variable.
_IGNORE_IDENTICAL_IDS: ContextVar[bool] = ContextVar("ignore_identical_ids", default=True)


@contextmanager
def identical_ids(*, ignore: bool) -> Iterator[None]:
    """Within the block, metrics called without ``ignore_identical_ids`` use ``ignore``."""
    token = _IGNORE_IDENTICAL_IDS.set(ignore)
    try:
        yield
    finally:
        _IGNORE_IDENTICAL_IDS.reset(token)


def ignoring_identical_ids() -> bool:
    """The policy in force: True (BEIR's default) unless inside ``identical_ids(ignore=False)``."""
    return _IGNORE_IDENTICAL_IDS.get()


def drop_identical_ids(run: Run) -> dict[str, dict[str, float]]:
    """Remove hits whose doc id equals the query id, as BEIR's ``ignore_identical_ids`` does."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def evaluate_per_query(
    qrels: Mapping[str, Mapping[str, int]],
    run: Run,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Per-query scores, metric -> {qid: value}, over the queries judged in ``qrels``.

    Judged queries with no hits in the run score 0, as BEIR does, rather than vanishing.
    ``ignore_identical_ids`` None follows :func:`identical_ids` (default: drop them, as BEIR does).
    """
    if ignore_identical_ids is None:
        ignore_identical_ids = ignoring_identical_ids()
    unknown = [m for m in metrics if m not in _MEASURES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(_MEASURES)}")
    if ignore_identical_ids:
        run = drop_identical_ids(run)
    out: dict[str, dict[str, float]] = {m: {} for m in metrics}
    by_cut: dict[int | None, list[str]] = {}
    for m in metrics:
        by_cut.setdefault(_MEASURES[m][2], []).append(m)
    for cut, names in by_cut.items():
        measures = {_MEASURES[m][0] for m in names}
        cut_run = {q: _top(run.get(q, {}), cut) for q in qrels}
        evaluator = pytrec_eval.RelevanceEvaluator(
            {q: dict(d) for q, d in qrels.items()}, measures
        )
        scores = evaluator.evaluate({q: d for q, d in cut_run.items() if d})
        for m in names:
            key = _MEASURES[m][1]
            out[m] = {q: scores.get(q, {}).get(key, 0.0) for q in qrels}
    return out


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Run,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool | None = None,
) -> dict[str, float]:
    """Mean of each metric over the judged queries."""
    per_query = evaluate_per_query(qrels, run, metrics, ignore_identical_ids=ignore_identical_ids)
    return {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in per_query.items()}
