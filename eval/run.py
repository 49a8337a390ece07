"""Run retrieval modes of ``trident_search.core.engine.Engine`` in process over a BEIR split, and tune fusion.

The engine is the one the server runs, called with the same ``SearchRequest`` models, so the
numbers describe the served code. Each query is one ``Engine.search`` call timed on its own, which
gives honest per-query latency (encoding, retrieval, fusion and docstore fetch included).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trident_search.core.schemas import SearchRequestBase, search_request_model
from trident_search.errors import TridentError
from trident_search.eval.metrics import DEFAULT_METRICS, evaluate_per_query
from trident_search.eval.results import ModeResult, Run, latency_summary
from trident_search.eval.safe_tuning import DEFAULT_FOLDS, TuningDecision, decide
from trident_search.eval.tuning import RetrieverRuns
from trident_search.indexers.hits import Hit
from trident_search.indexers.retriever import registered

if TYPE_CHECKING:
    from trident_search.core.engine import Engine

log = logging.getLogger(__name__)

EQUAL_WEIGHT = 1.0


class EvalError(TridentError, ValueError):
    """An evaluation that cannot run as asked (unknown mode, missing retriever, bad split)."""


@dataclass(frozen=True, slots=True)
class Mode:
    """A named way to search: which retrievers it needs and how to build its request."""

    name: str
    needs: tuple[str, ...]
    request: Callable[[str, int, Sequence[str]], SearchRequestBase]
    tuned: bool = False  # needs tuned settings (from the manifest, or from this run's --tune-on)
    served: bool = False  # what the server answers a plain request with: runs after any tuning decision


def _request(body: dict[str, Any]) -> SearchRequestBase:
    return search_request_model().model_validate({"include_text": False, **body})


def _single(retriever: str, **options: Any) -> Callable[[str, int, Sequence[str]], SearchRequestBase]:
    def build(query: str, k: int, _: Sequence[str]) -> SearchRequestBase:
        extra = {retriever: options} if options else {}
        return _request({"query": query, "mode": retriever, "k": k, **extra})

    return build


def _hybrid(method: str, *, untuned: bool,
            normalization: str = "minmax") -> Callable[[str, int, Sequence[str]], SearchRequestBase]:
    """Untuned: equal weights, RRF k=60 / min-max given explicitly, so a tuned manifest can't leak in.

    Tuned: only the method is given; weights, k and normalisation come from the manifest.
    """

    def build(query: str, k: int, retrievers: Sequence[str]) -> SearchRequestBase:
        if not untuned:
            return _request({"query": query, "mode": "hybrid", "k": k, "fusion": {"method": method}})
        fusion = ({"method": "rrf", "rrf_k": 60.0} if method == "rrf"
                  else {"method": "interpolation", "normalization": normalization})
        weights = {r: {"weight": EQUAL_WEIGHT} for r in retrievers}
        return _request({"query": query, "mode": "hybrid", "k": k, "fusion": fusion, **weights})

    return build


def _served(query: str, k: int, _: Sequence[str]) -> SearchRequestBase:
    """A plain ``{"mode": "hybrid"}`` request: every default (manifest included) is the server's."""
    return _request({"query": query, "mode": "hybrid", "k": k})


def modes() -> dict[str, Mode]:
    """Every eval mode: one per registered retriever (plus ``<name>-exact`` where the retriever has an
    exact knob), the hybrid fusions, untuned and tuned, and ``hybrid``: exactly what a plain hybrid
    request gets from the server (after ``--tune-on``: the default that tuning decided on)."""
    specs = registered()
    everyone = tuple(specs)
    out: list[Mode] = []
    for name, spec in specs.items():
        out.append(Mode(name, (name,), _single(name)))
        if "exact" in spec.options.model_fields:
            out.append(Mode(f"{name}-exact", (name,), _single(name, exact=True)))
    out += [
        Mode("rrf", everyone, _hybrid("rrf", untuned=True)),
        Mode("interpolation", everyone, _hybrid("interpolation", untuned=True)),
        Mode("dbsf", everyone, _hybrid("interpolation", untuned=True, normalization="dbsf")),
        Mode("rrf-tuned", everyone, _hybrid("rrf", untuned=False), tuned=True),
        Mode("interpolation-tuned", everyone, _hybrid("interpolation", untuned=False), tuned=True),
        Mode("hybrid", everyone, _served, served=True),
    ]
    return {m.name: m for m in out}


DEFAULT_MODES = ("bm25", "sparse", "sparse-exact", "dense", "rrf", "interpolation", "hybrid")


def parse_modes(spec: str) -> list[str]:
    """``"bm25,dense"`` -> ["bm25", "dense"]; unknown names are an error listing the known ones."""
    names = [m.strip() for m in spec.split(",") if m.strip()]
    known = modes()
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise EvalError(f"unknown modes {unknown or spec!r}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def check_modes(wanted: Sequence[str], available: Sequence[str]) -> None:
    """Fail before any work when the index lacks a retriever a mode needs.

    Hybrid modes fuse the retrievers the index has, so they need at least two of them.
    """
    known = modes()
    for name in wanted:
        mode = known[name]
        if len(mode.needs) == 1 and mode.needs[0] not in available:
            raise EvalError(f"mode {name} needs the {mode.needs[0]} retriever; this index has "
                            f"{', '.join(available)}")
        if len(mode.needs) > 1 and len(available) < 2:
            raise EvalError(f"mode {name} fuses retrievers; this index has only {', '.join(available)}")


def run_mode(
    engine: Engine, mode: str, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
    *, k: int = 100,
) -> ModeResult:
    """Search every query one at a time, time each call, and score the run (means and per query)."""
    spec = modes()[mode]
    build = spec.request
    run: Run = {}
    seconds: list[float] = []
    settings: dict[str, Any] = {}
    for qid, text in queries.items():
        request = build(text, k, engine.retrievers)
        start = time.perf_counter()
        response = engine.search(request)
        seconds.append(time.perf_counter() - start)
        run[qid] = {h.id: h.score for h in response.hits}
        if response.fusion is not None and not settings:
            settings = response.fusion.model_dump()
    if spec.tuned and settings.get("source") == "request":
        # the request names only the method; weights, k and normalisation are the manifest's
        settings = {**settings, "source": "manifest", "method_source": "request"}
    per_query = evaluate_per_query(qrels, run, DEFAULT_METRICS)
    metrics = {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in per_query.items()}
    lat = latency_summary(seconds)
    log.info("%-20s ndcg@10 %.4f  recall@100 %.4f  p50 %.1f ms", mode, metrics["ndcg@10"],
             metrics["recall@100"], lat["p50"])
    return ModeResult(mode, metrics, lat, run, settings, per_query=per_query)


def retrieve_lists(
    engine: Engine, queries: Mapping[str, str], depth: int = 100
) -> RetrieverRuns:
    """Each retriever's top ``depth`` for every query, retrieved once (the input to tuning)."""
    names = list(engine.retrievers)
    runs: dict[str, dict[str, list[Hit]]] = {r: {} for r in names}
    for qid, text in queries.items():
        for r, hits in engine.runs(text, depth, names).items():
            runs[r][qid] = hits
    return runs


def tune_fusion(
    engine: Engine, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
    *, split: str, depth: int = 100, folds: int = DEFAULT_FOLDS,
) -> TuningDecision:
    """Grid-search fusion on a tuning split; the winner replaces the engine's served default only if
    cross-validation on that split says it helps (:mod:`trident_search.eval.safe_tuning`). Nothing is
    written: ``safe_tuning.write_decision`` does that."""
    start = time.perf_counter()
    lists = retrieve_lists(engine, queries, depth)
    log.info("tuning: retrieved %d queries x %d retrievers in %.0f s", len(queries),
             len(lists), time.perf_counter() - start)
    current = engine.tuned.model_dump(exclude_none=True) if engine.tuned else None
    decision = decide(lists, qrels, split=split, current=current, folds=folds)
    log.info("tuning: best %s; %s", decision.result.best_score,
             "adopted" if decision.adopted else "default kept")
    return decision


def build_stages(manifest: Any) -> dict[str, float]:
    """Seconds per build stage as the manifest recorded them (stage -> seconds).

    Per stage rather than one total, so a report shows which stages the index records at all
    (encodings adopted from elsewhere have no encode stage here).
    """
    stages = getattr(manifest, "stages", None) or {}
    return {name: float(s.get("seconds", 0.0)) for name, s in stages.items()}
