"""Tuning that cannot hurt: adopt tuned fusion only when the gain survives cross-validation.

A grid search on a few dozen tuning queries finds *some* setting that beats the default on those
queries, by margins as small as 0.0007, and on held-out queries it often loses. So the decision is
made on the tuning split itself, by k-fold cross-validation of the whole procedure:

1. split the tuning queries into k folds (shuffled with a fixed seed);
2. for each fold, grid-search on the other folds exactly as ``--tune-on`` does (both methods, the
   served method being the better of the two) and score that winner on the held-out fold;
3. the out-of-fold scores are what tuning would give on unseen queries; compare them query by query
   with the currently served default (the manifest's entry, or RRF k=60 with equal weights) by a
   paired randomisation test (:mod:`trident_search.eval.significance`, ranx).

The tuned winner (grid search on all tuning queries) replaces the served default only when the
out-of-fold mean is higher *and* p < alpha. Otherwise the default stays and the decision says why.
Writing the manifest is separate (:func:`write_decision`, behind ``--write-manifest``) and keeps the
entry it replaces under ``previous``, so :func:`restore_previous` can put it back.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trident_search.core import fusion
from trident_search.core.tuned import MANIFEST_KEY, TunedFusion
from trident_search.eval.metrics import evaluate_per_query
from trident_search.eval.significance import ALPHA, paired
from trident_search.eval.tuning import (
    FusionSettings,
    RetrieverRuns,
    TuningError,
    TuningResult,
    manifest_fusion,
    tune,
    write_manifest_fusion,
)
from trident_search.indexers.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
MIN_QUERIES = 10  # fewer tuning queries than this can't show anything: keep the default outright


@dataclass(slots=True)
class TuningDecision:
    """The grid-search winner, whether it replaces the served default, and the evidence."""

    result: TuningResult
    candidate: dict[str, Any]  # the manifest entry tuning would write (manifest_fusion)
    current: dict[str, Any] | None  # the served entry before tuning; None: the built-in default
    adopted: bool
    reason: str
    cv: dict[str, Any] = field(default_factory=dict)

    def served(self) -> dict[str, Any] | None:
        """The fusion entry a server should use after this decision (None: the built-in default)."""
        return self.manifest_entry() if self.adopted else self.current

    def manifest_entry(self) -> dict[str, Any]:
        """The candidate with the entry it replaces (``{}``: the built-in default) and the evidence."""
        previous = {k: v for k, v in (self.current or {}).items() if k != "previous"}
        return {**self.candidate, "previous": previous, "decision": self.summary()}

    def summary(self) -> dict[str, Any]:
        return {"adopted": self.adopted, "reason": self.reason, "cv": self.cv}

    def to_json(self) -> dict[str, Any]:
        return {**self.result.to_json(), **self.summary(), "candidate": self.candidate,
                "current": self.current}


def settings_of(entry: Mapping[str, Any] | None, names: Sequence[str]) -> FusionSettings:
    """The fusion a plain hybrid request gets under a manifest entry (None: RRF k=60, weight 1.0 each),
    by the engine's rule (``Engine.fusion_for``): per-method values, a missing weight is 1.0."""
    if not entry:
        return FusionSettings("rrf", {n: 1.0 for n in names}, rrf_k=fusion.DEFAULT_RRF_K)
    tuned = TunedFusion.model_validate(dict(entry))
    per = tuned.for_method(tuned.method)
    weights = {n: float(per.weights.get(n, 1.0)) for n in names}
    return FusionSettings(tuned.method, weights,
                          rrf_k=per.rrf_k if per.rrf_k is not None else fusion.DEFAULT_RRF_K,
                          normalization=per.normalization or "minmax")


def served_settings(result: TuningResult) -> FusionSettings:
    """The setting ``manifest_fusion`` would make the default: the better method's winner."""
    return result.best[manifest_fusion(result)["method"]]


def per_query(runs: RetrieverRuns, qrels: Mapping[str, Mapping[str, int]], settings: FusionSettings,
              *, metric: str = "ndcg@10", k: int = 100) -> dict[str, float]:
    """Score one setting query by query, fused by the engine's own ``core.fusion.fuse``."""
    run: dict[str, dict[str, float]] = {}
    for qid in qrels:
        fused = fusion.fuse({n: r.get(qid, ()) for n, r in runs.items()}, settings.method,
                            weights=settings.weights, rrf_k=settings.rrf_k,
                            normalization=settings.normalization)
        run[qid] = {f.docid: f.score for f in fused[:k]}
    return evaluate_per_query(qrels, run, (metric,))[metric]


def folds_of(qids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` folds of shuffled query ids, sizes differing by at most one."""
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    return [order[i::k] for i in range(k)]


def decide(
    runs: RetrieverRuns, qrels: Mapping[str, Mapping[str, int]], *, split: str,
    current: Mapping[str, Any] | None = None, folds: int = DEFAULT_FOLDS, alpha: float = ALPHA,
    metric: str = "ndcg@10", points: Sequence[FusionSettings] | None = None, seed: int = 0,
) -> TuningDecision:
    """Grid-search on every tuning query, and adopt the winner only if cross-validation says so."""
    if folds < 2:
        raise TuningError(f"cross-validation needs at least 2 folds, got {folds}")
    result = tune(runs, qrels, split=split, metric=metric, points=points)
    candidate = manifest_fusion(result)
    current = dict(current) if current else None
    judged = {q: dict(d) for q, d in qrels.items() if any(q in r for r in runs.values())}
    names = list(runs)

    def keep(reason: str, cv: dict[str, Any] | None = None) -> TuningDecision:
        log.info("tuning: keeping the served default: %s", reason)
        return TuningDecision(result, candidate, current, False, reason, cv or {})

    if len(judged) < max(MIN_QUERIES, folds):
        return keep(f"only {len(judged)} judged tuning queries; cross-validation needs at least "
                    f"{max(MIN_QUERIES, folds)}")
    default = settings_of(current, names)
    oof: dict[str, float] = {}
    winners = []
    for i, held_out in enumerate(folds_of(list(judged), folds, seed)):
        train = {q: judged[q] for q in judged if q not in set(held_out)}
        fold = tune(runs, train, split=split, metric=metric, points=points)
        winner = served_settings(fold)
        winners.append(winner.label())
        oof.update(per_query(runs, {q: judged[q] for q in held_out}, winner, metric=metric))
        log.info("tuning: fold %d/%d winner %s", i + 1, folds, winner.label())
    base = per_query(runs, judged, default, metric=metric)
    test = paired(oof, base, mode="tuned (out of fold)", baseline="served default", metric=metric)
    cv = {"folds": folds, "queries": len(judged), "default": default.label(), "fold_winners": winners,
          "alpha": alpha, "seed": seed, **test.to_json()}
    if test.delta <= 0:
        return keep(f"tuning does not beat the served default on held-out folds ({folds}-fold "
                    f"cross-validation on {split}: {test.mean:.4f} vs {test.baseline_mean:.4f} {metric})", cv)
    if test.p_value >= alpha:
        return keep(f"the {folds}-fold cross-validated gain on {split} ({test.delta:+.4f} {metric}) is not "
                    f"significant (p = {test.p_value:.3g} >= {alpha}, paired randomisation test)", cv)
    reason = (f"the {folds}-fold cross-validated gain on {split} is {test.delta:+.4f} {metric} "
              f"(p = {test.p_value:.3g} < {alpha}, paired randomisation test, {test.wins} wins / "
              f"{test.ties} ties / {test.losses} losses)")
    log.info("tuning: adopting %s: %s", served_settings(result).label(), reason)
    return TuningDecision(result, candidate, current, True, reason, cv)


def write_decision(index_dir: Path, decision: TuningDecision) -> bool:
    """Write an adopted decision into the manifest (previous entry kept); False when not adopted."""
    if not decision.adopted:
        return False
    write_manifest_fusion(index_dir, decision.manifest_entry())
    return True


def restore_previous(index_dir: Path) -> dict[str, Any] | None:
    """Put back the fusion entry the current one replaced; returns it (None: the built-in default)."""
    try:
        manifest = Manifest.load(index_dir)
    except ManifestError as exc:
        raise TuningError(str(exc)) from None
    entry = manifest.extra.get(MANIFEST_KEY)
    if not isinstance(entry, dict):
        raise TuningError(f"{index_dir}: the manifest has no fusion entry to restore from")
    previous = entry.get("previous")
    if previous is None:
        raise TuningError(f"{index_dir}: the fusion entry records no previous entry (written before "
                          "--write-manifest kept one); remove the manifest's 'fusion' key by hand")
    if previous:
        TunedFusion.model_validate(previous).store(manifest)
    else:
        manifest.extra.pop(MANIFEST_KEY)
    manifest.write(index_dir)
    return previous or None
