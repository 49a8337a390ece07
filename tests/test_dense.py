"""DenseIndex: exact and approximate search, filters inside FAISS, save/load round trips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trident_search.indexers.dense import DenseIndex, DenseIndexError, default_factory


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chunks(x: np.ndarray, size: int = 700):
    return (x[i : i + size] for i in range(0, len(x), size))


@pytest.fixture(scope="module")
def docs() -> np.ndarray:
    return _unit(3000, 32, 0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return _unit(20, 32, 1)


def _truth(docs: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    sims = q @ docs.T
    if allowed is not None:
        sims[:, ~allowed] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_flat_is_exact_and_ids_are_positions(docs: np.ndarray, queries: np.ndarray) -> None:
    index = DenseIndex.build(_chunks(docs), 32)
    ids, scores = index.search(queries, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (20, 10)
    np.testing.assert_array_equal(ids, _truth(docs, queries, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ docs.T, ids, axis=1), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_hnsw_recall_and_ef_search_per_call(docs: np.ndarray, queries: np.ndarray) -> None:
    index = DenseIndex.build(_chunks(docs), 32, "HNSW16", threads=1)
    truth = _truth(docs, queries, 10)
    ids, _ = index.search(queries, 10, ef_search=256)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    assert recall >= 0.95
    assert index.params.ef_construction == 40


def test_hnsw_single_thread_build_is_reproducible(docs: np.ndarray, tmp_path: Path) -> None:
    for name in ("a", "b"):
        DenseIndex.build(_chunks(docs), 32, "HNSW16", threads=1).save(tmp_path / name)
    assert (tmp_path / "a" / "index.faiss").read_bytes() == (tmp_path / "b" / "index.faiss").read_bytes()


def test_ivfpq_trains_on_first_chunks_and_nprobe_is_per_call(docs: np.ndarray, queries: np.ndarray) -> None:
    index = DenseIndex.build(_chunks(docs), 32, "IVF16,PQ32x4", train_size=2000)
    assert len(index) == 3000
    truth = _truth(docs, queries, 1)[:, 0]

    def found(nprobe: int) -> float:
        ids, _ = index.search(queries, 10, nprobe=nprobe)
        return float(np.mean([t in row for t, row in zip(truth, ids)]))

    assert found(16) >= 0.9 > found(1)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
@pytest.mark.parametrize("every", [2, 1000])  # a broad filter goes through FAISS, a narrow one is exact
def test_allowed_mask_is_applied_inside_the_search(
    factory: str, every: int, docs: np.ndarray, queries: np.ndarray
) -> None:
    index = DenseIndex.build(_chunks(docs), 32, factory, train_size=3000)
    allowed = np.zeros(len(docs), dtype=bool)
    allowed[::every] = True
    ids, scores = index.search(queries, 5, allowed=allowed, ef_search=512, nprobe=16)
    valid = ids >= 0
    assert allowed[ids[valid]].all()
    if every == 1000:  # 3 allowed documents: all of them, exactly ranked, then padding
        np.testing.assert_array_equal(ids[:, :3], _truth(docs, queries, 3, allowed))
        assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    elif factory != "HNSW16":
        np.testing.assert_array_equal(ids, _truth(docs, queries, 5, allowed))


def test_save_load_round_trip(docs: np.ndarray, queries: np.ndarray, tmp_path: Path) -> None:
    index = DenseIndex.build(_chunks(docs), 32, "HNSW16", ef_construction=80)
    index.save(tmp_path / "dense")
    loaded = DenseIndex.load(tmp_path / "dense")
    assert loaded.params == index.params and loaded.params.ef_construction == 80
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
        np.testing.assert_array_equal(a, b)


def test_errors_say_what_is_wrong(docs: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(DenseIndexError, match="factory string"):
        DenseIndex.build(_chunks(docs), 32, "NotAnIndex")
    with pytest.raises(DenseIndexError, match=r"shape \(n, 32\)"):
        DenseIndex.build([docs[:, :16]], 32)
    index = DenseIndex.build(_chunks(docs), 32)
    with pytest.raises(DenseIndexError, match="one entry per document"):
        index.search(docs[:1], 3, allowed=np.ones(5, dtype=bool))
    with pytest.raises(DenseIndexError, match="not a dense index"):
        DenseIndex.load(tmp_path)


def test_default_factory_switches_to_hnsw_for_large_corpora() -> None:
    assert default_factory(5_000) == "Flat"
    assert default_factory(1_000_000).startswith("HNSW")
