"""Rank fusion: reciprocal rank fusion and normalised score interpolation, as pure functions.

Each retriever gives one *run*: either an ordered ``Sequence[Hit]`` (best first; the order is taken
as given) or a ``Mapping[str, float]`` from external id to score (ordered here by score descending,
ties broken by docid ascending, so equal inputs always give equal ranks).

Both fusions are a sum over runs of a per-run contribution, and differ only in what a run
contributes for a document it returned and for one it did not:

**RRF** (Cormack, Clarke, Buettcher, SIGIR 2009)::

    score(d) = sum_r  w_r / (rrf_k + rank_r(d))      rank is 1-based; absent documents add 0

``rrf_k`` is RRF's smoothing constant (60 in the paper), not the number of results.

**Interpolation** (convex combination, as in Bruch, Gai, Ingber, TOIS 2023)::

    score(d) = sum_r  w_r * norm_r(d)

where ``norm_r`` is one of:

* ``minmax`` (default): ``(s - min) / (max - min)``, into [0, 1]. A document absent from the run
  gets **0**, the value of that run's worst hit. When the range has zero width (a single hit, or all
  scores equal) every hit gets **1.0**: the run cannot order its hits, but it did retrieve them, so
  they rank above documents it did not retrieve (OpenSearch's normalisation processor does the same).
* ``zscore``: ``(s - mean) / std`` (population std). An absent document gets the run's **minimum
  z-score**. With zero std every hit gets 0.0, so does an absent document, and the run has no effect.
* ``none``: raw scores. An absent document gets the run's **minimum raw score**.
* ``dbsf`` (distribution-based score fusion, as in Qdrant): ``(s - (mean - 3 std)) / (6 std)``
  with the sample std, clipped to [0, 1]; an absent document gets **0**. With fewer than two hits
  or zero std every hit gets **0.5** (the value of the mean).

Each run may use its own normaliser (``normalizers={"bm25": "dbsf"}``, as Elasticsearch's
``linear`` retriever allows); runs not named use ``normalization``.

**Score scale** (:func:`max_score`, used by ``min_score``): a fused score divided by its largest
possible value for the weights in use is on [0, 1] for RRF (every run ranking the document first)
and for interpolation with minmax or dbsf (the weighted sum over the sum of weights); with zscore
or none the quotient is the weighted mean and is not bounded.

An empty run contributes nothing. Weights default to 1.0 per run and must be finite and >= 0.
Results are ordered by fused score descending, ties broken by docid ascending (stable pagination).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from trident_search.errors import TridentError
from trident_search.indexers.hits import Hit

Run: TypeAlias = Sequence[Hit] | Mapping[str, float]
Runs: TypeAlias = Mapping[str, Run] | Sequence[Run]
Weights: TypeAlias = Mapping[str, float] | Sequence[float] | None

DEFAULT_RRF_K = 60.0


class FusionError(TridentError, ValueError):
    """Fusion inputs that do not fit together (weights, parameters, unknown names)."""


@dataclass(frozen=True, slots=True)
class Normalized:
    """One run after normalisation: a value per returned document and the value for absent ones."""

    scores: dict[str, float]
    missing: float


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one run said about one document; ``rank`` is None when the run did not return it."""

    rank: int | None
    raw: float | None
    normalized: float
    weighted: float


@dataclass(frozen=True, slots=True)
class _Column:
    """One run's values over the union of fused documents (rank 0 = not returned)."""

    weight: float
    rank: np.ndarray
    raw: np.ndarray
    normalized: np.ndarray


class FusedHit:
    """A fused result; ``contributions`` gives the per-run breakdown that produced its score.

    The breakdown is built on first access: a fusion yields a few hundred candidates, and only the
    page that is shown (with ``explain``) needs it.
    """

    __slots__ = ("_columns", "_row", "docid", "score")

    def __init__(self, docid: str, score: float, row: int, columns: dict[str, _Column]) -> None:
        self.docid = docid
        self.score = score
        self._row = row
        self._columns = columns

    @property
    def contributions(self) -> dict[str, Contribution]:
        out = {}
        for name, col in self._columns.items():
            rank = int(col.rank[self._row])
            value = float(col.normalized[self._row])
            out[name] = Contribution(
                rank or None, float(col.raw[self._row]) if rank else None, value, col.weight * value
            )
        return out

    def __repr__(self) -> str:
        return f"FusedHit({self.docid!r}, {self.score!r})"


def ranked(run: Run) -> list[Hit]:
    """A run as hits, best first: sequences keep their order, mappings sort by (-score, docid)."""
    if isinstance(run, Mapping):
        return [Hit(d, float(s)) for d, s in sorted(run.items(), key=lambda kv: (-kv[1], kv[0]))]
    return list(run)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a zero-width range maps every score to 1.0 (see module docstring)."""
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo <= 0.0:
        return np.ones_like(scores, dtype=np.float64)
    return (scores - lo) / (hi - lo)


def zscore(scores: np.ndarray) -> np.ndarray:
    """Centre on the mean and divide by the population std; zero std maps every score to 0.0."""
    std = float(scores.std())
    if std <= 0.0:
        return np.zeros_like(scores, dtype=np.float64)
    return (scores - scores.mean()) / std


def identity(scores: np.ndarray) -> np.ndarray:
    """Raw scores, for retrievers that are already on comparable scales."""
    return scores.astype(np.float64)


def dbsf(scores: np.ndarray) -> np.ndarray:
    """Distribution-based: mean +- 3 sample std onto [0, 1], clipped; < 2 hits or zero std -> 0.5."""
    if scores.size < 2:
        return np.full(scores.shape, 0.5)
    mean, std = float(scores.mean()), float(scores.std(ddof=1))
    if std <= 0.0:
        return np.full(scores.shape, 0.5)
    return np.clip((scores - (mean - 3 * std)) / (6 * std), 0.0, 1.0)


NORMALIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "minmax": minmax,
    "zscore": zscore,
    "none": identity,
    "dbsf": dbsf,
}


def _normalized_values(hits: Sequence[Hit], method: str) -> tuple[np.ndarray, float]:
    """Normalised scores aligned with ``hits`` and the value for absent documents."""
    try:
        fn = NORMALIZERS[method]
    except KeyError:
        raise FusionError(
            f"unknown normalization {method!r}; choose one of {sorted(NORMALIZERS)}"
        ) from None
    if not hits:
        return np.zeros(0), 0.0
    values = fn(np.fromiter((h.score for h in hits), dtype=np.float64, count=len(hits)))
    return values, 0.0 if method in ("minmax", "dbsf") else float(values.min())


def _reciprocal_values(hits: Sequence[Hit], k: float) -> tuple[np.ndarray, float]:
    if not (math.isfinite(k) and k >= 0):
        raise FusionError(f"rrf_k must be a finite number >= 0, got {k!r}")
    return 1.0 / (k + np.arange(1, len(hits) + 1, dtype=np.float64)), 0.0


def normalize(run: Run, method: str = "minmax") -> Normalized:
    """Normalise one run's scores and give the value an absent document receives."""
    hits = ranked(run)
    values, missing = _normalized_values(hits, method)
    return Normalized({h.docid: float(v) for h, v in zip(hits, values, strict=True)}, missing)


def reciprocal_ranks(run: Run, k: float = DEFAULT_RRF_K) -> Normalized:
    """RRF's per-run term 1 / (k + rank), rank 1-based; absent documents get 0."""
    hits = ranked(run)
    values, missing = _reciprocal_values(hits, k)
    return Normalized({h.docid: float(v) for h, v in zip(hits, values, strict=True)}, missing)


def _named(runs: Runs) -> dict[str, Run]:
    if isinstance(runs, Mapping):
        return dict(runs)
    return {str(i): run for i, run in enumerate(runs)}


def _weights(names: list[str], weights: Weights) -> dict[str, float]:
    if weights is None:
        out = {n: 1.0 for n in names}
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise FusionError(f"weights given for runs {unknown} that are not fused; runs: {names}")
        out = {n: float(weights.get(n, 1.0)) for n in names}
    else:
        if len(weights) != len(names):
            raise FusionError(f"got {len(weights)} weights for {len(names)} runs")
        out = {n: float(w) for n, w in zip(names, weights, strict=True)}
    bad = {n: w for n, w in out.items() if not (math.isfinite(w) and w >= 0)}
    if bad:
        raise FusionError(f"weights must be finite and >= 0, got {bad}")
    return out


def fuse(
    runs: Runs,
    method: str = "rrf",
    *,
    weights: Weights = None,
    rrf_k: float = DEFAULT_RRF_K,
    normalization: str = "minmax",
    normalizers: Mapping[str, str] | None = None,
) -> list[FusedHit]:
    """Fuse runs and keep, for every document, each run's rank, raw, normalised and weighted score.

    This is the one implementation; :func:`rrf` and :func:`interpolate` are views of it without the
    breakdown. Positional runs are named ``"0"``, ``"1"``, ... in the breakdown. ``normalizers``
    overrides ``normalization`` per run (interpolation only).
    """
    named = _named(runs)
    w = _weights(list(named), weights)
    if method not in ("rrf", "interpolation"):
        raise FusionError(f"unknown fusion method {method!r}; choose 'rrf' or 'interpolation'")
    per_run = dict(normalizers or {})
    unknown = sorted(set(per_run) - set(named))
    if unknown:
        raise FusionError(f"normalizers given for runs {unknown} that are not fused; runs: {list(named)}")
    lists = {name: ranked(run) for name, run in named.items()}
    row: dict[str, int] = {}
    for hits in lists.values():
        for h in hits:
            row.setdefault(h.docid, len(row))
    n = len(row)
    total = np.zeros(n)
    columns: dict[str, _Column] = {}
    for name, hits in lists.items():
        if method == "rrf":
            values, missing = _reciprocal_values(hits, rrf_k)
        else:
            values, missing = _normalized_values(hits, per_run.get(name, normalization))
        rows = np.fromiter((row[h.docid] for h in hits), dtype=np.int64, count=len(hits))
        normalized = np.full(n, missing)
        normalized[rows] = values
        rank = np.zeros(n, dtype=np.int64)
        rank[rows] = np.arange(1, len(hits) + 1)
        raw = np.full(n, np.nan)
        raw[rows] = np.fromiter((h.score for h in hits), dtype=np.float64, count=len(hits))
        total += w[name] * normalized  # runs added in order: the same sum as a scalar loop
        columns[name] = _Column(w[name], rank, raw, normalized)
    docids = list(row)
    scores = total.tolist()
    order = sorted(range(n), key=lambda i: (-scores[i], docids[i]))
    return [FusedHit(docids[i], scores[i], i, columns) for i in order]


def max_score(method: str, weights: Mapping[str, float], rrf_k: float = DEFAULT_RRF_K) -> float:
    """The divisor that puts fused scores on the documented [0, 1] scale (module docstring):
    ``sum_r w_r / (rrf_k + 1)`` for RRF, ``sum_r w_r`` for interpolation (1.0 when that is 0)."""
    total = sum(weights.values())
    if method == "rrf":
        total /= rrf_k + 1.0
    return total if total > 0 else 1.0


def rrf(runs: Runs, k: float = DEFAULT_RRF_K, weights: Weights = None) -> list[Hit]:
    """Weighted reciprocal rank fusion; ``k`` is RRF's constant, not a result count."""
    return [Hit(f.docid, f.score) for f in fuse(runs, "rrf", weights=weights, rrf_k=k)]


def interpolate(
    runs: Runs, weights: Weights = None, normalization: str = "minmax"
) -> list[Hit]:
    """Weighted sum of normalised scores (see the module docstring for absent documents)."""
    return [
        Hit(f.docid, f.score)
        for f in fuse(runs, "interpolation", weights=weights, normalization=normalization)
    ]
