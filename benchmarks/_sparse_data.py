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
    # log-normal close to SPLADE-tiny document weights on WordNet (median 0.51, p10 0.08, p90 1.57,
    # max 2.6: log(1 + ReLU) saturates), hence the cap
    weights = np.minimum(rng.lognormal(mean=-0.65, sigma=0.9, size=indices.shape[0]), 3.0).astype(np.float32)
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


def _open_text(path: Path):  # noqa: ANN202
    import gzip

    if not path.exists() and Path(str(path) + ".gz").exists():
        path = Path(str(path) + ".gz")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _corpus_texts(path: Path) -> list[str]:
    from trident_search.encoders.text import document_text

    with _open_text(path) as f:
        return [document_text(r.get("title"), r.get("text")) for r in map(json.loads, f)]


def _query_texts(path: Path) -> list[str]:
    with _open_text(path) as f:
        return [str(json.loads(line)["text"]) for line in f]


def save_compact(path: Path, m: sp.csr_matrix) -> None:
    """A CSR matrix as a compressed .npz with uint16 term ids where the vocabulary allows (the shards
    travel back from the GPU machine, whose returned files are capped at 16 MiB)."""
    m = m.tocsr()
    idx = m.indices.astype(np.uint16) if m.shape[1] <= 65536 else m.indices.astype(np.int32)
    np.savez_compressed(path, indptr=m.indptr.astype(np.int64), indices=idx, data=m.data.astype(np.float32),
                        shape=np.array(m.shape, dtype=np.int64))


def load_compact(path: Path) -> sp.csr_matrix:
    z = np.load(path)
    if "format" in z.files:  # written by scipy.sparse.save_npz
        return sp.load_npz(path).tocsr()
    m = sp.csr_matrix((z["data"], z["indices"].astype(np.int32), z["indptr"]), shape=tuple(z["shape"]))
    m.sort_indices()
    return m


def encode_beir(folder: Path, name: str, query_files: list[str], *, cache_dir: Path = CACHE_DIR,
                model: str | None = None, device: str = "auto", shard_docs: int = 40_000,
                batch_size: int = 256) -> None:
    """Encode a BEIR-layout folder once with the default SPLADE encoder into `cache_dir`:
    `<name>-docs-<i>.npz` shards (small files travel back from the GPU machine) and
    `<name>-<queries file stem>.npz`."""
    from trident_search.encoders.sparse import SparseEncoder

    cache_dir.mkdir(parents=True, exist_ok=True)
    enc = SparseEncoder(model, device=device, batch_size=batch_size)
    texts = _corpus_texts(folder / "corpus.jsonl")
    for i, start in enumerate(range(0, len(texts), shard_docs)):
        save_compact(cache_dir / f"{name}-docs-{i:02d}.npz", enc.encode_documents(texts[start : start + shard_docs]))
        log.info("%s: encoded %d/%d documents", name, min(start + shard_docs, len(texts)), len(texts))
    for qf in query_files:
        save_compact(cache_dir / f"{name}-{Path(qf).stem}.npz", enc.encode_queries(_query_texts(folder / qf)))


def load_encoded(name: str, query_files: list[str], *, cache_dir: Path = CACHE_DIR
                 ) -> tuple[sp.csr_matrix, dict[str, sp.csr_matrix]]:
    """(documents, {queries file stem: queries}) as written by `encode_beir`."""
    shards = sorted(cache_dir.glob(f"{name}-docs-*.npz"))
    missing = [qf for qf in query_files if not (cache_dir / f"{name}-{Path(qf).stem}.npz").exists()]
    if not shards or missing:
        raise FileNotFoundError(
            f"no cached SPLADE vectors for {name} in {cache_dir}: run "
            f"`python benchmarks/_sparse_data.py {name}` (add --device cuda on a GPU machine)")
    docs = sp.vstack([load_compact(p) for p in shards]).tocsr()
    return docs, {Path(qf).stem: load_compact(cache_dir / f"{name}-{Path(qf).stem}.npz") for qf in query_files}


DATASETS = {
    "wordnet": (Path("/work/shared/data/wordnet"), ["queries.jsonl", "queries_phrases.jsonl"]),
    "scifact": (Path("/work/shared/data/beir/scifact"), ["queries.jsonl"]),
}


if __name__ == "__main__":
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description="Encode a corpus once with the default SPLADE encoder (cached).")
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--data", type=Path, help="BEIR folder (default: the shared copy)")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", help="model folder (default: the offline SPLADE-tiny)")
    args = ap.parse_args()
    folder, qfiles = DATASETS[args.dataset]
    encode_beir(args.data or folder, args.dataset, qfiles, cache_dir=args.cache_dir, model=args.model,
                device=args.device)
