"""Sparse vectors for the learned-sparse benchmarks: a seeded SPLADE-like generator and cached
SPLADE encodings of real corpora.

The synthetic set mimics what makes SPLADE collections hard for an inverted index: Zipfian term
frequencies (a few terms occur in most documents, so their lists must be pruned), log-normal weights,
and topical co-occurrence (documents share groups of terms), so that the top documents of a query
are not just those that happen to contain its one rarest term.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

CACHE_DIR = Path(__file__).resolve().parent.parent / "cache" / "sparse"


def _zipf_probabilities(vocab: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Term probabilities proportional to 1/(rank+offset)^exponent, with ranks shuffled over ids."""
    ranks = np.arange(vocab, dtype=np.float64)
    p = 1.0 / (ranks + 20.0) ** exponent
    p /= p.sum()
    return p[rng.permutation(vocab)]


def _sample_rows(
    n: int,
    nnz_mean: int,
    vocab: int,
    p_global: np.ndarray,
    topics: np.ndarray,
    topic_share: float,
    rng: np.random.Generator,
) -> sp.csr_matrix:
    """Rows of distinct term ids, part drawn from a per-row topic and part from the global Zipf law."""
    lengths = np.clip(rng.poisson(nnz_mean, size=n), 1, None)
    width = int(lengths.max() * 1.6) + 8
    n_topic = int(width * topic_share)
    row_topic = rng.integers(0, topics.shape[0], size=n)
    cand = np.empty((n, width), dtype=np.int64)
    cand[:, :n_topic] = topics[row_topic[:, None], rng.integers(0, topics.shape[1], size=(n, n_topic))]
    cand[:, n_topic:] = rng.choice(vocab, size=(n, width - n_topic), p=p_global)
    # Interleave topic and global draws so that truncation keeps both kinds, then drop duplicates.
    cand = cand[:, rng.permutation(width)]
    order = np.argsort(cand, axis=1, kind="stable")
    sorted_c = np.take_along_axis(cand, order, axis=1)
    dup_sorted = np.zeros_like(sorted_c, dtype=bool)
    dup_sorted[:, 1:] = sorted_c[:, 1:] == sorted_c[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    keep = ~dup & (np.cumsum(~dup, axis=1) <= lengths[:, None])
    counts = keep.sum(axis=1)
    indices = cand[keep].astype(np.int32)
    weights = rng.lognormal(mean=-0.3, sigma=0.7, size=indices.shape[0]).astype(np.float32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    m = sp.csr_matrix((weights, indices, indptr), shape=(n, vocab))
    m.sort_indices()
    return m


def synthetic_splade(
    n_docs: int = 100_000,
    n_queries: int = 1000,
    *,
    vocab: int = 30522,
    doc_nnz: int = 120,
    query_nnz: int = 40,
    n_topics: int = 2000,
    topic_size: int = 150,
    seed: int = 0,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Deterministic SPLADE-like (docs, queries) CSR matrices, float32 weights, int32 term ids."""
    rng = np.random.default_rng(seed)
    p = _zipf_probabilities(vocab, 1.0, rng)
    topics = rng.choice(vocab, size=(n_topics, topic_size), p=_zipf_probabilities(vocab, 0.6, rng))
    docs = _sample_rows(n_docs, doc_nnz, vocab, p, topics, 0.5, rng)
    queries = _sample_rows(n_queries, query_nnz, vocab, p, topics, 0.5, rng)
    return docs, queries


def cached_encoding(name: str, texts_fn, encode_fn) -> sp.csr_matrix:  # noqa: ANN001
    """Load `cache/sparse/<name>.npz`, or compute it with `encode_fn(texts_fn())` and store it."""
    path = CACHE_DIR / f"{name}.npz"
    if path.exists():
        return sp.load_npz(path).tocsr()
    log.info("encoding %s (cached at %s)", name, path)
    m = encode_fn(texts_fn()).tocsr()
    path.parent.mkdir(parents=True, exist_ok=True)
    sp.save_npz(path, m)
    return m


def read_jsonl_texts(path: Path, *, with_title: bool) -> tuple[list[str], list[str]]:
    """(ids, texts) of a BEIR-style JSONL file; title and text joined as BEIR does."""
    ids, texts = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ids.append(str(row["_id"]))
            text = row.get("text", "")
            title = row.get("title", "") if with_title else ""
            texts.append(f"{title} {text}".strip() if title else text)
    return ids, texts
