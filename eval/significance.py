"""Is a difference between two retrieval modes real? Paired per-query tests through ranx.

Both modes are scored per query on the same judged queries (by :mod:`trident_search.eval.metrics`, so
the numbers are the report's). The statistics are ranx's: a two-sided paired Student's t-test and
Fisher's (approximate) randomisation test, the pair Smucker et al. (CIKM '07) recommend for IR. The
randomisation p-value is the one reported as ``p_value``; it makes no normality assumption.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ranx.statistical_tests import fisher_randomization_test, paired_student_t_test

from trident_search.errors import TridentError

PRIMARY_METRIC = "ndcg@10"
N_PERMUTATIONS = 10_000
SEED = 42
ALPHA = 0.05
TIE = 1e-9  # per-query differences smaller than this are ties (floating-point noise)


class SignificanceError(TridentError, ValueError):
    """Two runs that cannot be compared (no common judged query, unknown baseline)."""


@dataclass(slots=True)
class PairedComparison:
    """``mode`` against ``baseline`` on ``metric``, query by query."""

    mode: str
    baseline: str
    metric: str
    mean: float
    baseline_mean: float
    t_test_p: float
    randomization_p: float
    wins: int
    ties: int
    losses: int
    n_permutations: int = N_PERMUTATIONS
    deltas: dict[str, float] = field(default_factory=dict, repr=False)  # qid -> mode - baseline

    @property
    def queries(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def delta(self) -> float:
        return self.mean - self.baseline_mean

    @property
    def p_value(self) -> float:
        """The randomisation test's two-sided p-value."""
        return self.randomization_p

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value < alpha

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline, "metric": self.metric, "queries": self.queries,
            "mean": self.mean, "baseline_mean": self.baseline_mean, "delta": self.delta,
            "t_test_p": self.t_test_p, "randomization_p": self.randomization_p,
            "n_permutations": self.n_permutations, "p_value": self.p_value,
            "wins": self.wins, "ties": self.ties, "losses": self.losses,
        }


def paired(
    scores: Mapping[str, float], baseline_scores: Mapping[str, float], *, mode: str, baseline: str,
    metric: str = PRIMARY_METRIC, n_permutations: int = N_PERMUTATIONS, seed: int = SEED,
) -> PairedComparison:
    """Compare per-query scores (qid -> value) on the queries both have.

    Identical score vectors get p = 1 (scipy's t-test answers NaN when every difference is 0).
    """
    qids = sorted(set(scores) & set(baseline_scores))
    if not qids:
        raise SignificanceError(f"{mode} and {baseline} have no judged query in common")
    treatment = np.array([scores[q] for q in qids], dtype=np.float64)
    control = np.array([baseline_scores[q] for q in qids], dtype=np.float64)
    diff = treatment - control
    if np.all(np.abs(diff) < TIE):
        t_p = r_p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy on (nearly) constant differences
            t_p = float(paired_student_t_test(control, treatment, ALPHA)[0])
        r_p = float(fisher_randomization_test(control, treatment, n_permutations, ALPHA, seed)[0])
        if math.isnan(t_p):  # a constant non-zero difference: the t statistic is infinite
            t_p = 0.0
    return PairedComparison(
        mode=mode, baseline=baseline, metric=metric,
        mean=float(treatment.mean()), baseline_mean=float(control.mean()),
        t_test_p=t_p, randomization_p=r_p,
        wins=int((diff >= TIE).sum()), ties=int((np.abs(diff) < TIE).sum()), losses=int((diff <= -TIE).sum()),
        n_permutations=n_permutations, deltas={q: float(d) for q, d in zip(qids, diff, strict=True)},
    )


def format_p(p: float, n_permutations: int | None = None) -> str:
    """``0.0123``; a randomisation p of 0 is below what its permutations resolve: ``< 0.0001``."""
    if p == 0.0 and n_permutations:
        return f"< {1 / n_permutations:g}"
    return f"{p:.3g}"


def default_baseline(means: Mapping[str, float], singles: Sequence[str]) -> str | None:
    """The best single-retriever mode by its mean (ties: the first), or None when none ran."""
    ran = [m for m in singles if m in means]
    return max(ran, key=lambda m: means[m]) if ran else None


def against_baseline(
    per_query: Mapping[str, Mapping[str, float]], baseline: str, *, metric: str = PRIMARY_METRIC,
    n_permutations: int = N_PERMUTATIONS,
) -> dict[str, PairedComparison]:
    """Every mode (mode -> qid -> score) against ``baseline``; the baseline itself is left out."""
    if baseline not in per_query:
        raise SignificanceError(f"baseline {baseline!r} was not run; ran: {', '.join(per_query)}")
    return {
        mode: paired(scores, per_query[baseline], mode=mode, baseline=baseline, metric=metric,
                     n_permutations=n_permutations)
        for mode, scores in per_query.items() if mode != baseline
    }


def _eq(p: str) -> str:
    return p if p.startswith("<") else f"= {p}"


def plot_wins_losses(comparisons: Sequence[PairedComparison], path: Any, *, title: str = "") -> None:
    """One panel per mode: its per-query difference to the baseline, sorted (green: wins, red: losses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(comparisons) or []
    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(10, 1.7 * max(1, len(rows)) + 1.0), dpi=110,
                             squeeze=False, sharex=False)
    for ax, c in zip(axes[:, 0], rows, strict=False):
        deltas = sorted(c.deltas.values(), reverse=True)
        colours = ["tab:green" if d >= TIE else "tab:red" if d <= -TIE else "0.6" for d in deltas]
        ax.bar(range(len(deltas)), deltas, width=1.0, color=colours)
        ax.axhline(0.0, color="0.3", linewidth=0.6)
        ax.set_xlim(-0.5, max(len(deltas), 1) - 0.5)
        ax.set_xticks([])
        ax.set_ylabel(f"\u0394 {c.metric}", fontsize=8)
        ax.set_title(f"{c.mode} vs {c.baseline}: {c.wins} wins / {c.ties} ties / {c.losses} losses, "
                     f"\u0394 mean {c.delta:+.4f}, p {_eq(format_p(c.p_value, c.n_permutations))} (randomisation), "
                     f"{c.t_test_p:.3g} (t-test)", fontsize=8, loc="left")
        ax.tick_params(axis="y", labelsize=7)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "nothing to compare", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.suptitle(title or "Per-query differences against the baseline (queries sorted by difference)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
