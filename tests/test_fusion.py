"""Fusion against hand-computed values (written as the formulas) and against ranx."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trident_search.core.fusion import (
    FusionError,
    fuse,
    interpolate,
    minmax,
    normalize,
    ranked,
    rrf,
    zscore,
)
from trident_search.indexers.hits import Hit

from conftest import require

BM25 = {"a": 12.0, "b": 9.0, "c": 3.0}
DENSE = [Hit("c", 0.9), Hit("d", 0.7), Hit("a", 0.5)]


def as_dict(hits: list[Hit]) -> dict[str, float]:
    return {h.docid: h.score for h in hits}


def test_ranked_orders_mappings_by_score_then_docid() -> None:
    assert [h.docid for h in ranked({"z": 1.0, "y": 2.0, "x": 1.0})] == ["y", "x", "z"]
    assert ranked(DENSE) == DENSE


def test_rrf_hand_computed() -> None:
    out = as_dict(rrf([BM25, DENSE], k=60))
    assert out["a"] == pytest.approx(1 / (60 + 1) + 1 / (60 + 3))
    assert out["b"] == pytest.approx(1 / (60 + 2))
    assert out["c"] == pytest.approx(1 / (60 + 3) + 1 / (60 + 1))
    assert out["d"] == pytest.approx(1 / (60 + 2))


def test_rrf_weights_and_k() -> None:
    out = as_dict(rrf({"bm25": BM25, "dense": DENSE}, k=1, weights={"bm25": 2.0, "dense": 0.5}))
    assert out["a"] == pytest.approx(2.0 / (1 + 1) + 0.5 / (1 + 3))
    assert out["d"] == pytest.approx(0.5 / (1 + 2))
    # A weight left out of the mapping defaults to 1.0.
    partial = as_dict(rrf({"bm25": BM25, "dense": DENSE}, k=1, weights={"bm25": 2.0}))
    assert partial["d"] == pytest.approx(1.0 / (1 + 2))


def test_ties_break_by_docid_for_stable_pages() -> None:
    # a and c both score 1/61 + 1/63, b and d both 1/62: docid decides within each tie.
    order = [h.docid for h in rrf([BM25, DENSE])]
    assert order == ["a", "c", "b", "d"]
    assert order == [h.docid for h in rrf([dict(BM25), list(DENSE)])]


def test_minmax_interpolation_hand_computed() -> None:
    out = as_dict(interpolate({"bm25": BM25, "dense": DENSE}, weights={"bm25": 0.3, "dense": 0.7}))
    n_bm25 = {"a": (12 - 3) / (12 - 3), "b": (9 - 3) / (12 - 3), "c": (3 - 3) / (12 - 3)}
    n_dense = {"c": (0.9 - 0.5) / (0.9 - 0.5), "d": (0.7 - 0.5) / (0.9 - 0.5), "a": 0.0}
    assert out["a"] == pytest.approx(0.3 * n_bm25["a"] + 0.7 * n_dense["a"])
    assert out["b"] == pytest.approx(0.3 * n_bm25["b"] + 0.7 * 0.0)  # absent from dense -> 0
    assert out["c"] == pytest.approx(0.3 * n_bm25["c"] + 0.7 * n_dense["c"])
    assert out["d"] == pytest.approx(0.3 * 0.0 + 0.7 * n_dense["d"])  # absent from bm25 -> 0


def test_zscore_interpolation_missing_gets_run_minimum() -> None:
    out = as_dict(interpolate([BM25, DENSE], normalization="zscore"))
    s1 = np.array([12.0, 9.0, 3.0])
    z1 = dict(zip("abc", (s1 - s1.mean()) / s1.std(), strict=True))
    s2 = np.array([0.9, 0.7, 0.5])
    z2 = dict(zip("cda", (s2 - s2.mean()) / s2.std(), strict=True))
    assert out["b"] == pytest.approx(z1["b"] + min(z2.values()))
    assert out["d"] == pytest.approx(min(z1.values()) + z2["d"])
    assert out["a"] == pytest.approx(z1["a"] + z2["a"])


def test_none_normalization_missing_gets_raw_minimum() -> None:
    out = as_dict(interpolate([BM25, DENSE], normalization="none"))
    assert out["b"] == pytest.approx(9.0 + 0.5)
    assert out["d"] == pytest.approx(3.0 + 0.7)


def test_zero_width_ranges() -> None:
    # minmax: a single hit or equal scores -> 1.0, absent documents still 0.
    assert minmax(np.array([4.2])).tolist() == [1.0]
    assert minmax(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]
    single = normalize([Hit("x", 7.0)], "minmax")
    assert single.scores == {"x": 1.0} and single.missing == 0.0
    out = as_dict(interpolate([[Hit("x", 7.0)], {"x": 0.2, "y": 0.8}]))
    assert out["x"] == pytest.approx(1.0 + 0.0)
    assert out["y"] == pytest.approx(0.0 + 1.0)
    # zscore: zero std -> every hit 0 and absent documents 0, so the run has no effect.
    assert zscore(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]
    flat = normalize({"p": 3.0, "q": 3.0}, "zscore")
    assert flat.scores == {"p": 0.0, "q": 0.0} and flat.missing == 0.0
    assert all(math.isfinite(h.score) for h in interpolate([{"p": 1.0}, {}], normalization="zscore"))


def test_empty_inputs() -> None:
    assert rrf([]) == []
    assert rrf([[], {}]) == []
    assert as_dict(interpolate([[], BM25])) == as_dict(interpolate([BM25]))


def test_explain_breakdown() -> None:
    fused = {f.docid: f for f in fuse({"bm25": BM25, "dense": DENSE}, "rrf", rrf_k=60)}
    b = fused["b"].contributions
    assert (b["bm25"].rank, b["bm25"].raw) == (2, 9.0)
    assert b["bm25"].normalized == pytest.approx(1 / 62)
    assert (b["dense"].rank, b["dense"].raw, b["dense"].normalized) == (None, None, 0.0)
    inter = fuse({"bm25": BM25}, "interpolation", weights={"bm25": 0.5})
    assert inter[1].contributions["bm25"].weighted == pytest.approx(0.5 * (9 - 3) / (12 - 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "borda"}, "unknown fusion method"),
        ({"method": "interpolation", "normalization": "l2"}, "unknown normalization"),
        ({"weights": [1.0]}, "1 weights for 2 runs"),
        ({"weights": [1.0, -1.0]}, ">= 0"),
        ({"weights": [1.0, float("nan")]}, ">= 0"),
        ({"rrf_k": -1.0}, "rrf_k"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(FusionError, match=match):
        fuse([BM25, DENSE], **kwargs)


def test_unknown_weight_name_raises() -> None:
    with pytest.raises(FusionError, match="sparse"):
        rrf({"bm25": BM25}, weights={"sparse": 1.0})


# --- cross-check with ranx, where the definitions coincide -------------------------------------
ranx = require("ranx")  # a dev extra: skips locally without it, fails in CI


def _random_runs(seed: int) -> list[dict[str, float]]:
    """Three overlapping runs with distinct scores (ranx and we break ties differently)."""
    rng = np.random.default_rng(seed)
    pool = [f"d{i}" for i in range(40)]
    runs = []
    for _ in range(3):
        ids = rng.choice(pool, size=25, replace=False)
        runs.append(dict(zip(ids.tolist(), rng.permutation(1000)[:25].astype(float) / 7.0, strict=True)))
    return runs


def _ranx_fuse(runs: list[dict[str, float]], **kwargs) -> dict[str, float]:
    out = ranx.fuse([ranx.Run({"q": r}) for r in runs], **kwargs)
    return dict(out.to_dict()["q"])


@pytest.mark.parametrize("seed", [0, 1])
def test_rrf_matches_ranx(seed: int) -> None:
    runs = _random_runs(seed)
    ours = as_dict(rrf(runs, k=60))
    theirs = _ranx_fuse(runs, method="rrf", params={"k": 60})
    assert ours.keys() == theirs.keys()
    for d in ours:
        assert ours[d] == pytest.approx(theirs[d])


@pytest.mark.parametrize("seed", [0, 1])
def test_minmax_weighted_sum_matches_ranx(seed: int) -> None:
    # ranx's wsum gives absent documents 0, which is our min-max floor too.
    runs = _random_runs(seed)
    weights = [0.2, 0.5, 0.3]
    ours = as_dict(interpolate(runs, weights=weights, normalization="minmax"))
    theirs = _ranx_fuse(runs, method="wsum", norm="min-max", params={"weights": weights})
    assert ours.keys() == theirs.keys()
    for d in ours:
        assert ours[d] == pytest.approx(theirs[d])


def test_zscore_matches_ranx_when_every_run_has_every_document() -> None:
    # ranx gives absent documents 0 (the mean) under z-score; we give the run minimum, so compare
    # only on runs over the same documents.
    rng = np.random.default_rng(3)
    ids = [f"d{i}" for i in range(20)]
    runs = [dict(zip(ids, rng.normal(size=20).tolist(), strict=True)) for _ in range(2)]
    ours = as_dict(interpolate(runs, weights=[0.4, 0.6], normalization="zscore"))
    theirs = _ranx_fuse(runs, method="wsum", norm="zmuv", params={"weights": [0.4, 0.6]})
    for d in ids:
        assert ours[d] == pytest.approx(theirs[d])
