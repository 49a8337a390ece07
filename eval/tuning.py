"""Tune fusion settings on a tuning split, and store the winner in an index manifest.

Each retriever's depth-``d`` list is retrieved once per tuning query; every grid point is then only
a fusion in memory, with the same ``trident_search.core.fusion`` code the engine runs, and a metric. The test
split must never be passed here: :func:`tune` refuses a split named ``test``.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.core.fusion import Normalized, normalize, reciprocal_ranks
from trident_search.core.tuned import TunedFusion
from trident_search.errors import TridentError
from trident_search.eval.metrics import evaluate
from trident_search.indexers.hits import Hit
from trident_search.indexers.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)

# retriever name -> qid -> ranked hits (best first)
RetrieverRuns = Mapping[str, Mapping[str, Sequence[Hit]]]

DEFAULT_RRF_KS = (5.0, 10.0, 20.0, 40.0, 60.0, 100.0)
DEFAULT_NORMALIZATIONS = ("minmax", "zscore", "dbsf")  # dbsf: Qdrant's mean +- 3 std, see core.fusion


class TuningError(TridentError, ValueError):
    """Tuning asked for something unsafe (tuning on test) or impossible (no runs)."""


@dataclass(frozen=True, slots=True)
class FusionSettings:
    """One point of the grid; ``rrf_k`` matters for RRF only, ``normalization`` for interpolation."""

    method: str
    weights: dict[str, float]
    rrf_k: float = 60.0
    normalization: str = "minmax"

    def params(self) -> dict[str, Any]:
        """The settings this method uses, in the manifest's per-method shape."""
        extra: dict[str, Any] = (
            {"rrf_k": self.rrf_k} if self.method == "rrf" else {"normalization": self.normalization}
        )
        return {"weights": self.weights, **extra}

    def label(self) -> str:
        w = ",".join(f"{n}={v:g}" for n, v in self.weights.items())
        extra = f"k={self.rrf_k:g}" if self.method == "rrf" else self.normalization
        return f"{self.method}({w}; {extra})"


@dataclass(slots=True)
class TuningResult:
    """Best settings per method, the objective they reached, and every trial for the report."""

    metric: str
    split: str
    queries: int
    best: dict[str, FusionSettings]
    best_score: dict[str, float]
    trials: list[tuple[FusionSettings, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "split": self.split,
            "queries": self.queries,
            "best": {m: s.params() for m, s in self.best.items()},
            "best_score": self.best_score,
            "trials": len(self.trials),
            "grid": [{"method": s.method, **s.params(), "score": v} for s, v in self.trials],
        }


def weight_grid(names: Sequence[str], step: float = 0.1) -> list[dict[str, float]]:
    """All weight vectors on the simplex with the given step (sum 1, each a multiple of step).

    Fused rankings are invariant to scaling all weights, so the simplex covers every ranking a
    non-negative weighting can produce.
    """
    n = round(1 / step)
    if abs(n * step - 1) > 1e-9 or n < 1:
        raise TuningError(f"weight step must divide 1 evenly, got {step}")
    grid = []
    for combo in itertools.product(range(n + 1), repeat=len(names)):
        if sum(combo) == n:
            grid.append({name: round(c / n, 6) for name, c in zip(names, combo, strict=True)})
    return grid


def _transform(hits: Sequence[Hit], settings: FusionSettings) -> Normalized:
    """One run's per-document fusion term, from the engine's own fusion code."""
    if settings.method == "rrf":
        return reciprocal_ranks(hits, settings.rrf_k)
    return normalize(hits, settings.normalization)


def _fused_runs(
    runs: RetrieverRuns, qids: Sequence[str], group: Sequence[FusionSettings], depth: int
) -> list[dict[str, dict[str, float]]]:
    """Fuse every query under each setting of a group sharing one per-run transform.

    ``trident_search.core.fusion`` gives each run's normalised (or reciprocal-rank) values; the weighted sum
    over runs is then one matrix product for all weight vectors at once, which is what makes a
    grid of hundreds of points cheap. Documents are pre-sorted by docid descending and sorted
    stably by score, which is trec_eval's order, so cutting at ``depth`` keeps exactly the
    documents trec_eval would score.
    """
    names = list(runs)
    weights = np.array([[s.weights.get(n, 0.0) for s in group] for n in names])  # (runs, points)
    out: list[dict[str, dict[str, float]]] = [{} for _ in group]
    for qid in qids:
        parts = [_transform(runs[n].get(qid, ()), group[0]) for n in names]
        docids = sorted(set().union(*(p.scores for p in parts)), reverse=True)
        if not docids:
            continue
        values = np.array([[p.scores.get(d, p.missing) for p in parts] for d in docids])
        fused = values @ weights  # (docs, points)
        top = np.argsort(-fused, axis=0, kind="stable")[:depth]
        for j, run in enumerate(out):
            col = fused[:, j]
            run[qid] = {docids[i]: float(col[i]) for i in top[:, j]}
    return out


def grid(
    names: Sequence[str],
    *,
    methods: Iterable[str] = ("rrf", "interpolation"),
    weight_step: float = 0.1,
    rrf_ks: Iterable[float] = DEFAULT_RRF_KS,
    normalizations: Iterable[str] = DEFAULT_NORMALIZATIONS,
) -> list[FusionSettings]:
    """Every setting the search tries, in a fixed order (ties go to the earliest)."""
    weights = weight_grid(names, weight_step)
    points: list[FusionSettings] = []
    for method in methods:
        if method == "rrf":
            points += [FusionSettings("rrf", w, rrf_k=float(k)) for k in rrf_ks for w in weights]
        elif method == "interpolation":
            points += [
                FusionSettings("interpolation", w, normalization=n)
                for n in normalizations
                for w in weights
            ]
        else:
            raise TuningError(f"unknown fusion method {method!r}; choose 'rrf' or 'interpolation'")
    return points


def tune(
    runs: RetrieverRuns,
    qrels: Mapping[str, Mapping[str, int]],
    *,
    split: str,
    metric: str = "ndcg@10",
    points: Sequence[FusionSettings] | None = None,
    k: int = 100,
) -> TuningResult:
    """Grid search: the best setting per fusion method by the mean of ``metric`` over ``qrels``.

    Only the judged queries count. Ties keep the first point in grid order.
    """
    if split == "test":
        raise TuningError("refusing to tune on the test split; tune on train or dev")
    if not runs:
        raise TuningError("no retriever runs to fuse")
    judged = {q: d for q, d in qrels.items() if any(q in r for r in runs.values())}
    if not judged:
        raise TuningError("none of the judged queries of the tuning split has retrieved lists")
    runs = {name: {q: r[q] for q in judged if q in r} for name, r in runs.items()}
    points = list(points) if points is not None else grid(list(runs))
    unknown = {n for p in points for n in p.weights} - set(runs)
    if unknown:
        raise TuningError(f"weights name retrievers {sorted(unknown)} with no runs; have {sorted(runs)}")
    depth = _cutoff(metric, k)
    groups: dict[tuple[str, float, str], list[FusionSettings]] = {}
    for p in points:
        key = (p.method, p.rrf_k if p.method == "rrf" else 0.0, p.normalization if p.method != "rrf" else "")
        groups.setdefault(key, []).append(p)
    result = TuningResult(metric, split, len(judged), {}, {})
    scores: dict[int, float] = {}
    qids = sorted(judged)
    for group in groups.values():
        for settings, run in zip(group, _fused_runs(runs, qids, group, depth), strict=True):
            scores[id(settings)] = evaluate(judged, run, (metric,))[metric]
        log.info("tuning: %s done (%d points)", group[0].label(), len(group))
    for settings in points:  # grid order decides ties
        score = scores[id(settings)]
        result.trials.append((settings, score))
        if score > result.best_score.get(settings.method, float("-inf")):
            result.best[settings.method] = settings
            result.best_score[settings.method] = score
    return result


def _cutoff(metric: str, k: int) -> int:
    """How deep the fused list must go for ``metric`` (``ndcg@10`` needs 10, not 100)."""
    _, _, cut = metric.partition("@")
    return min(int(cut), k) if cut.isdigit() else k


def manifest_fusion(result: TuningResult, default_method: str | None = None) -> dict[str, Any]:
    """The ``fusion`` manifest entry: per-method defaults the engine applies, plus provenance."""
    method = default_method or max(result.best_score, key=result.best_score.__getitem__)
    entry: dict[str, Any] = {"method": method}
    for name, s in result.best.items():
        entry[name] = s.params()
    entry["tuned_on"] = {
        "split": result.split,
        "metric": result.metric,
        "queries": result.queries,
        "scores": result.best_score,
    }
    return entry


def write_manifest_fusion(index_dir: Path, fusion: Mapping[str, Any]) -> None:
    """Set the index manifest's ``fusion`` key; the manifest is rewritten atomically."""
    try:
        manifest = Manifest.load(index_dir)
    except ManifestError as exc:
        raise TuningError(str(exc)) from None
    TunedFusion.model_validate(dict(fusion)).store(manifest)
    manifest.write(index_dir)
