"""SparseIndex: a Seismic-like learned-sparse index (build, save/load, search).

Layout (all plain arrays, memory-mapped on load). The query path is bound by cache misses, so the
layout minimises the bytes and distinct cache lines a query touches:

* forward index (unpruned): one uint16 buffer ``fwd_buf`` of per-document records
  ``[n: u32][n term ids][n bfloat16 weights]`` starting at u16 offset ``fwd_ptr[d]``. Term ids are
  uint16 when the vocabulary has at most 65,536 terms, else uint32. Records are stored grouped by each
  document's home block (see ``_build.home_order``), not in id order. The exact float32 weight is
  ``bf16 << 16`` plus a signed 16-bit remainder in ``fwd_lo`` (CSR order, row pointers ``lo_ptr``):
  exact scores only ever come from these.
* pruned posting lists cut into blocks: list ``t`` owns blocks ``list_block_ptr[t]:list_block_ptr[t+1]``,
  block ``g`` owns postings ``block_doc_ptr[g]:block_doc_ptr[g+1]``, each a document id alone
  (``block_docs``: uint16 up to 65,536 documents, else int32); its record is found through
  ``fwd_ptr`` (uint32 offsets while they fit, 4 bytes a document: small enough to stay cached).
  Pointer arrays are int32 while their values fit.
* block summaries as short sparse vectors: block ``g`` owns entries ``sum_ptr[g]:sum_ptr[g+1]`` of
  ``sum_terms`` (ascending) and ``sum_vals`` (8-bit, times ``block_scale[g]``). A list's summaries are
  contiguous, so scoring them is one sequential read.
* optional kNN graph ``knn`` (n_docs, knn), padded with -1.
* exact mode runs term-at-a-time over full posting lists, rebuilt from the forward index in memory on
  the first exact search (they are not stored: 8 bytes a weight would double the index).

Input policy: documents and queries are CSR rows over the same vocabulary. Duplicate term ids in a
row are **summed** (scipy's canonical form), explicit zeros are dropped, and negative or non-finite
weights are rejected (SPLADE weights are non-negative; summaries are max-based upper bounds).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import _build, _search
from ._params import SparseFormatError, SparseIndexError, SparseParams

log = logging.getLogger(__name__)

FORMAT_NAME = "trident-sparse"
FORMAT_VERSION = 3
PARAMS_FILE = "params.json"
ARRAYS = (
    "fwd_ptr", "fwd_buf", "lo_ptr", "fwd_lo",
    "list_block_ptr", "block_doc_ptr", "block_docs", "block_scale", "sum_ptr", "sum_terms", "sum_vals",
    "knn",
)
NARROW_VOCAB = 65536  # term ids fit 16 bits up to here
_CHUNK_POSTINGS = 2_000_000
_CSR_TYPES = (sp.csr_matrix, sp.csr_array)
_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _canonical(m: sp.spmatrix, what: str, vocab_size: int | None = None) -> sp.csr_matrix:
    """CSR, float32 weights, sorted unique int32 term ids, no zeros; negatives rejected."""
    if not sp.issparse(m):
        raise SparseIndexError(f"{what} must be a scipy.sparse CSR matrix, got {type(m).__name__}")
    m = m.tocsr()
    if vocab_size is not None and m.shape[1] != vocab_size:
        raise SparseIndexError(
            f"{what} have {m.shape[1]} columns but the index vocabulary has {vocab_size}: "
            "encode them with the same sparse encoder the index was built with")
    if m.shape[1] > np.iinfo(np.int32).max:
        raise SparseIndexError(f"{what}: vocabulary of {m.shape[1]} terms exceeds int32 term ids")
    canonical = m.has_canonical_format and m.dtype == np.float32 and m.indices.dtype == np.int32
    if not canonical:
        m = sp.csr_matrix((m.data.astype(np.float32), m.indices.astype(np.int32), m.indptr.copy()), shape=m.shape)
        m.sum_duplicates()
    data = m.data
    if data.size and (not np.isfinite(data).all() or data.min() < 0):
        raise SparseIndexError(f"{what} contain negative or non-finite weights; SPLADE weights are >= 0")
    if data.size and data.min() == 0:
        m = m.copy()
        m.eliminate_zeros()
    return m


class _Scratch:
    """One thread's query scratch for one index, allocated once and reused by every query."""

    def __init__(self, n_docs: int, vocab: int, max_blocks: int) -> None:
        self.qmap8 = np.zeros(vocab, dtype=np.uint8)  # queries of up to 255 terms
        self.qmap32 = np.zeros(vocab, dtype=np.int32)  # longer ones
        self.qv = np.zeros(vocab + 1, dtype=np.float32)
        self.visited = np.zeros(max(n_docs, 1), dtype=np.uint8)
        self.stamp = np.zeros(1, dtype=np.int64)
        self.bscore = np.zeros(max(max_blocks, 1), dtype=np.float32)
        self.border = np.zeros(max(max_blocks, 1), dtype=np.int32)


class _Local(threading.local):
    """Per-thread kernel states: ``approx`` (no exact lists) and ``exact`` (made on first exact use)."""

    approx: _search.State | None = None
    exact: _search.State | None = None
    scratch: _Scratch | None = None


class SparseIndex:
    """Seismic-like inverted index over learned-sparse document vectors, keyed by internal id."""

    def __init__(self, arrays: dict[str, np.ndarray], params: SparseParams, vocab_size: int) -> None:
        self._a = arrays
        self.params = params
        self.vocab_size = vocab_size
        self.n_docs = int(arrays["fwd_ptr"].shape[0] - 1)
        lbp = arrays["list_block_ptr"]
        self._max_blocks = int(np.diff(lbp).max()) if lbp.shape[0] > 1 else 0
        self._local = _Local()
        self._no_filter = np.ones(1, dtype=np.bool_)
        self._qshape = (1, vocab_size)
        self._exact_lists: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()
        buf = arrays["fwd_buf"]
        narrow = vocab_size <= NARROW_VOCAB
        b32 = buf.view(np.uint32)
        self._fwd = (arrays["fwd_ptr"], buf, b32, buf if narrow else b32, 0 if narrow else 1)
        self._lo = (arrays["lo_ptr"], arrays["fwd_lo"])
        self._pf_lines = _prefetch_lines(arrays, narrow)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, docs: sp.spmatrix, params: SparseParams | None = None, *,
              threads: int | None = None) -> SparseIndex:
        """Index `docs` (rows = internal ids, columns = vocabulary term ids)."""
        params = params or SparseParams()
        t0 = time.perf_counter()
        m = _canonical(docs, "documents")
        n_docs, vocab = m.shape
        params = params.resolved(n_docs, m.nnz, int(np.count_nonzero(np.bincount(m.indices, minlength=vocab))))
        fwd_ptr = m.indptr.astype(np.int64)
        fwd_terms = m.indices
        fwd_vals = m.data
        post_ptr, post_docs = _pruned_lists(m, params)
        top_t, top_v = _build.top_terms(fwd_ptr, fwd_terms, fwd_vals, params.doc_cut)
        # blocks and summaries, chunked over lists and run on a thread pool
        chunks: list[np.ndarray] = []
        start, acc = 0, 0
        for t in range(vocab):
            acc += int(post_ptr[t + 1] - post_ptr[t])
            if acc >= _CHUNK_POSTINGS or t == vocab - 1:
                chunks.append(np.arange(start, t + 1, dtype=np.int64))
                start, acc = t + 1, 0

        max_summary = params.max_summary

        def run(lists: np.ndarray):  # noqa: ANN202
            return _build.build_lists(lists, post_ptr, post_docs, fwd_ptr, fwd_terms, fwd_vals, top_t, top_v,
                                      vocab, params.centroid_fraction, params.summary_energy, max_summary,
                                      params.seed)

        with ThreadPoolExecutor(threads or _default_threads()) as pool:
            parts = list(pool.map(run, chunks))
        list_nblocks = np.concatenate([p[0] for p in parts]) if parts else np.zeros(vocab, np.int64)
        block_size = _cat([p[1] for p in parts], np.int64)
        block_docs = _cat([p[2] for p in parts], np.int32)
        block_doc_ptr = _offsets(block_size)
        list_block_ptr = _offsets(list_nblocks)
        block_list = np.repeat(np.arange(vocab, dtype=np.int32), list_nblocks)
        order = _build.home_order(block_docs, block_doc_ptr, block_list, top_t, n_docs)
        narrow = vocab <= NARROW_VOCAB
        rec_ptr, rec_buf, lo = _build.forward_records(fwd_ptr, fwd_terms, fwd_vals, narrow, order)
        arrays: dict[str, np.ndarray] = {
            "fwd_ptr": _narrow_ptr(rec_ptr, np.uint32), "fwd_buf": rec_buf, "lo_ptr": fwd_ptr, "fwd_lo": lo,
            "list_block_ptr": _narrow_ptr(list_block_ptr),
            "block_doc_ptr": _narrow_ptr(block_doc_ptr),
            "block_docs": block_docs.astype(np.uint16) if n_docs <= 65536 else block_docs,
            "block_scale": _cat([p[3] for p in parts], np.float32),
            "sum_ptr": _narrow_ptr(_offsets(_cat([p[4] for p in parts], np.int64))),
            "sum_terms": _cat([p[5] for p in parts], np.uint16 if narrow else np.int32),
            "sum_vals": _cat([p[6] for p in parts], np.uint8),
            "knn": np.zeros((n_docs, 0), dtype=np.int32),
        }
        index = cls(arrays, params, vocab)
        if params.knn > 0:
            index._a["knn"] = index._build_knn(m, params.knn, threads)
        log.info("sparse index: %d docs, %d postings, %d blocks, %d summary entries, built in %.1fs",
                 n_docs, post_docs.size, block_size.size, arrays["sum_terms"].size, time.perf_counter() - t0)
        return index

    def _build_knn(self, docs: sp.csr_matrix, n: int, threads: int | None) -> np.ndarray:
        """Each document's n nearest neighbours (itself excluded), found with the index itself."""
        ids, _ = self.batch_search(docs, n + 1, n_knn=0, threads=threads)
        own = ids == np.arange(self.n_docs)[:, None]
        out = np.full((self.n_docs, n), -1, dtype=np.int32)
        for i in range(self.n_docs):  # drop the document itself, keep order
            row = ids[i][~own[i]]
            row = row[row >= 0][:n]
            out[i, : row.size] = row
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write plain .npy arrays plus params.json (format name and version) into `path`."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for name in ARRAYS:
            np.save(out / f"{name}.npy", np.ascontiguousarray(self._a[name]), allow_pickle=False)
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "n_docs": self.n_docs,
                "vocab_size": self.vocab_size, "params": self.params.to_dict()}
        (out / PARAMS_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = True) -> SparseIndex:
        """Open a saved index; arrays are memory-mapped unless ``mmap=False``."""
        src = Path(path)
        pfile = src / PARAMS_FILE
        if not pfile.is_file():
            raise SparseFormatError(f"{src} is not a sparse index directory: {PARAMS_FILE} is missing")
        try:
            meta = json.loads(pfile.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SparseFormatError(f"{pfile} is not valid JSON ({e}); rebuild the index") from e
        if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise SparseFormatError(
                f"{src} holds sparse index format {meta.get('format')!r} version {meta.get('format_version')!r}, "
                f"but this Trident reads {FORMAT_NAME!r} version {FORMAT_VERSION}: rebuild the index with this version")
        arrays = {}
        for name in ARRAYS:
            f = src / f"{name}.npy"
            if not f.is_file():
                raise SparseFormatError(f"{src}: array file {f.name} is missing; rebuild the index")
            # np.asarray: a plain ndarray view of the memmap (numba dispatches plain arrays ~5x faster)
            arrays[name] = np.asarray(np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False))
        if arrays["fwd_ptr"].shape[0] - 1 != meta["n_docs"]:
            raise SparseFormatError(f"{src}: forward index has {arrays['fwd_ptr'].shape[0] - 1} docs, "
                                    f"params.json says {meta['n_docs']}; the directory is corrupt")
        return cls(arrays, SparseParams.from_dict(meta["params"]), int(meta["vocab_size"]))

    # ------------------------------------------------------------------ search
    def search(self, query: sp.spmatrix, k: int = 10, *, query_cut: int | None = None,
               heap_factor: float | None = None, exact: bool = False, n_knn: int | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (internal ids int64, scores float32), best first, for a 1-row query.

        Fewer than k results come back when fewer documents share a term with the query (or pass
        `allowed`); documents with score 0 are never returned.
        """
        # fast path: a float32/int32 CSR row goes straight to one compiled call, which checks that it
        # is canonical and the options in range (per-call Python is a visible share of a ~30 us search)
        p = self.params
        if (type(query) in _CSR_TYPES and query.shape == self._qshape and query.dtype == _F32
                and query.indices.dtype == _I32 and (allowed is None or self._allowed_ok(allowed))):
            code, ids, scores = _search.search_one(
                self._state(exact), query.indptr, query.indices, query.data, k,
                p.query_cut if query_cut is None else query_cut,
                p.heap_factor if heap_factor is None else float(heap_factor),
                p.n_knn if n_knn is None else n_knn, exact,
                self._no_filter if allowed is None else allowed, allowed is not None)
            if code == 0:
                return ids, scores
        # slow path: canonicalise the row and validate the options (raising the precise error)
        q = _canonical(query, "queries", self.vocab_size)
        if q.shape[0] != 1:
            raise SparseIndexError(f"search takes a 1-row query matrix, got {q.shape[0]} rows; use batch_search")
        kk, qc, hf, nk, mask, use_mask = self._options(k, query_cut, heap_factor, n_knn, allowed)
        code, ids, scores = _search.search_one(self._state(exact), q.indptr, q.indices, q.data, kk, qc, hf, nk,
                                               exact, mask, use_mask)
        if code != 0:  # pragma: no cover - _canonical and _options accept only what the kernel accepts
            raise SparseIndexError(f"query rejected by the search kernel (code {code})")
        return ids, scores

    def batch_search(self, queries: sp.spmatrix, k: int = 10, *, query_cut: int | None = None,
                     heap_factor: float | None = None, exact: bool = False, n_knn: int | None = None,
                     allowed: np.ndarray | None = None,
                     threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of every query row: ids (n, k) int64 padded with -1, scores (n, k) float32 (0-padded).

        Queries run in parallel on `threads` threads (default: CPU count), each single-threaded.
        """
        q = _canonical(queries, "queries", self.vocab_size)
        opts = self._options(k, query_cut, heap_factor, n_knn, allowed)
        kk = opts[0]
        nq = q.shape[0]
        ids = np.full((nq, k), -1, dtype=np.int64)
        scores = np.zeros((nq, k), dtype=np.float32)
        n_threads = max(1, min(threads or _default_threads(), nq))
        if n_threads == 1:
            self._work(q, opts, exact, 0, nq, ids[:, :kk], scores[:, :kk])
        else:
            bounds = np.linspace(0, nq, n_threads * 4 + 1).astype(int)
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(lambda a, b: self._work(q, opts, exact, a, b, ids[:, :kk], scores[:, :kk]),
                              bounds[:-1], bounds[1:]))
        return ids, scores

    def _allowed_ok(self, allowed: np.ndarray) -> bool:
        return type(allowed) is np.ndarray and allowed.dtype == np.bool_ and allowed.shape == (self.n_docs,)

    def _options(self, k: int, query_cut: int | None, heap_factor: float | None, n_knn: int | None,
                 allowed: np.ndarray | None) -> tuple:
        """Validated (heap size, query_cut, heap_factor, n_knn, allowed mask, mask in use)."""
        if k < 1:
            raise SparseIndexError(f"k must be >= 1, got {k}")
        p = self.params
        qc = p.query_cut if query_cut is None else int(query_cut)
        hf = p.heap_factor if heap_factor is None else float(heap_factor)
        nk = p.n_knn if n_knn is None else int(n_knn)
        if qc < 1 or not hf >= 0 or nk < 0:
            raise SparseIndexError(f"need query_cut >= 1, heap_factor >= 0, n_knn >= 0; got {qc}, {hf}, {nk}")
        if allowed is None:
            return min(k, max(self.n_docs, 1)), qc, hf, nk, self._no_filter, False
        allowed = np.asarray(allowed)
        if allowed.dtype != np.bool_ or allowed.shape != (self.n_docs,):
            raise SparseIndexError(f"allowed must be a bool array of shape ({self.n_docs},), "
                                   f"got {allowed.dtype} {allowed.shape}")
        return min(k, max(self.n_docs, 1)), qc, hf, nk, np.ascontiguousarray(allowed), True

    def _state(self, exact: bool) -> _search.State:
        """The calling thread's kernel state (index arrays + its scratch), made on its first query."""
        loc = self._local
        st = loc.exact if exact else loc.approx
        if st is None:
            st = self._make_state(exact)
        return st

    def _make_state(self, exact: bool) -> _search.State:
        loc = self._local
        if loc.scratch is None:
            loc.scratch = _Scratch(self.n_docs, self.vocab_size, self._max_blocks)
        s, a = loc.scratch, self._a
        if exact:
            col_ptr, col_docs, col_vals = self.exact_lists()
            acc = np.zeros(max(self.n_docs, 1), dtype=np.float32)  # zero between queries
            touched = np.zeros(max(self.n_docs, 1), dtype=np.int32)
        else:
            col_ptr, col_docs, col_vals = np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
            acc, touched = np.zeros(1, np.float32), np.zeros(1, np.int32)
        fwd_ptr, fwd16, fwd32, fwd_t, tshift = self._fwd
        st = _search.State(
            fwd_ptr, fwd16, fwd32, fwd_t, tshift, self._pf_lines, *self._lo,
            a["list_block_ptr"], a["block_doc_ptr"], a["block_docs"], a["block_scale"], a["sum_ptr"],
            a["sum_terms"], a["sum_vals"], a["knn"], col_ptr, col_docs, col_vals, self.vocab_size, self.n_docs,
            s.qmap8, s.qmap32, s.qv, s.visited, s.stamp, s.bscore, s.border, acc, touched)
        if exact:
            loc.exact = st
        else:
            loc.approx = st
        return st

    def _work(self, q: sp.csr_matrix, opts: tuple, exact: bool, a: int, b: int, ids: np.ndarray,
              scores: np.ndarray) -> int:
        """Queries [a, b) on the calling thread with its state; returns the last one's hit count."""
        kk, qc, hf, nk, allowed, use_allowed = opts
        return _search.search_range(self._state(exact), q.indptr, q.indices, q.data, a, b, kk, qc, hf, nk, exact,
                                    allowed, use_allowed, ids, scores)

    def exact_lists(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full posting lists with exact weights (list pointers, doc ids, float32 weights), rebuilt from
        the forward index on the first exact search (~8 bytes per weight, in memory only)."""
        if self._exact_lists is None:
            with self._lock:
                if self._exact_lists is None:
                    self._exact_lists = _build.exact_lists(*self._fwd[:5], *self._lo, self.vocab_size)
        return self._exact_lists

    # ------------------------------------------------------------------ introspection
    @property
    def nbytes(self) -> int:
        """Bytes of all index arrays (what `save` writes, less the JSON)."""
        return int(sum(self._a[n].nbytes for n in ARRAYS))

    def stats(self) -> dict[str, int]:
        a = self._a
        fwd = int(a["fwd_ptr"].nbytes + a["fwd_buf"].nbytes + a["lo_ptr"].nbytes + a["fwd_lo"].nbytes)
        return {"n_docs": self.n_docs, "vocab_size": self.vocab_size, "nnz": int(a["fwd_lo"].size),
                "postings": int(a["block_docs"].size), "blocks": int(a["block_scale"].size),
                "summary_entries": int(a["sum_terms"].size), "forward_bytes": fwd, "bytes": self.nbytes}


def _pruned_lists(m: sp.csr_matrix, params: SparseParams) -> tuple[np.ndarray, np.ndarray]:
    """Posting lists (CSC) keeping each list's heaviest `max_fraction x n_postings` entries, then the
    globally heaviest `n_postings x non-empty lists`. Returns (list pointers, doc ids ascending)."""
    csc = m.tocsc()
    col_ptr = csc.indptr.astype(np.int64)
    col_vals = csc.data
    keep = _build.cap_lists(col_ptr, col_vals, max(1, int(params.max_fraction * params.n_postings)))
    budget = params.n_postings * int(np.count_nonzero(np.diff(col_ptr)))
    if int(keep.sum()) > budget:
        kept_vals = col_vals[keep]
        thr = np.partition(kept_vals, kept_vals.size - budget)[kept_vals.size - budget]
        keep &= col_vals >= thr
    kept_before = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return kept_before[col_ptr], csc.indices[keep].astype(np.int32)


def _prefetch_lines(arrays: dict[str, np.ndarray], narrow: bool) -> int:
    """Cache lines to prefetch per forward record: the mean record size over the postings (long
    documents sit in more lists), so short records do not waste bandwidth and long ones arrive whole."""
    docs = arrays["block_docs"]
    if docs.size == 0:
        return 1
    lo_ptr = arrays["lo_ptr"]
    sample = docs[:: max(1, docs.size // 100_000)].astype(np.int64)
    n = float(np.mean(lo_ptr[sample + 1] - lo_ptr[sample]))
    nbytes = 4 + n * (4 if narrow else 6)  # header, ids, bf16 weights
    return int(min(16, max(1, np.ceil(nbytes / 64))))


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def _narrow_ptr(x: np.ndarray, dtype: type = np.int32) -> np.ndarray:
    """A non-negative pointer array as `dtype` when its largest value fits, else int64 (kernels read
    every pointer through np.int64(), so either works)."""
    top = int(x[-1]) if x.size else 0
    return x.astype(dtype) if top <= np.iinfo(dtype).max else x.astype(np.int64)
