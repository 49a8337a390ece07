"""Dense retrieval over L2-normalised embeddings with FAISS (inner product).

The index is described by a FAISS index-factory string, stored next to the index file so a reader
knows what it loads: ``"Flat"`` (exact, the default up to ~200k documents), ``"HNSW32"`` (graph,
for larger corpora) or ``"IVF1024,PQ32"`` (compressed, trained on the first vectors). Vectors are
added in internal-id order, so FAISS ids *are* internal ids and no id map is needed.

Filters are applied inside FAISS through an ``IDSelectorBitmap`` in the per-call
``SearchParameters``, so filtered results are still the top-k of the allowed documents. When only a
few documents are allowed, a graph or inverted-file search would visit too few of them: an HNSW
index then scores them exactly, an IVF index probes every list.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from trident_search.errors import TridentError

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
PARAMS_FILE = "params.json"
#: Corpora up to this size get an exact ``Flat`` index by default.
FLAT_MAX_DOCS = 200_000
#: With at most this many allowed documents, a filtered search scores them exactly.
EXACT_FILTER_MAX = 4096


class DenseIndexError(TridentError, ValueError):
    """A dense index that cannot be built, loaded or searched as asked."""


def default_factory(n_docs: int) -> str:
    """Exact search while it is cheap, an HNSW graph beyond that (DESIGN.md section 3)."""
    return "Flat" if n_docs <= FLAT_MAX_DOCS else "HNSW32"


@dataclass(frozen=True, slots=True)
class DenseParams:
    """What a reader needs to know about a saved index (``dense/params.json``)."""

    factory: str
    dim: int
    ntotal: int
    metric: str = "inner_product"
    ef_construction: int | None = None


@contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` FAISS/OpenMP threads, restoring the previous count afterwards."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise DenseIndexError(f"expected vectors of shape (n, {dim}), got {x.shape}")
    return x


class DenseIndex:
    """A FAISS inner-product index whose ids are Trident internal ids."""

    def __init__(self, index: faiss.Index, params: DenseParams) -> None:
        self.index = index
        self.params = params

    @property
    def dim(self) -> int:
        return self.params.dim

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors (live writes): row i gets internal id ``len(self) + i``. Removal is the
        live mask's (``allowed``), so every index type takes writes; IVF lists must be trained."""
        x = _as_matrix(vectors, self.dim)
        if not self.index.is_trained:
            raise DenseIndexError("the dense index is not trained; it cannot take writes")
        self.index.add(x)
        self.params = replace(self.params, ntotal=int(self.index.ntotal))

    @classmethod
    def build(
        cls,
        vectors: Iterable[np.ndarray],
        dim: int,
        factory: str = "Flat",
        *,
        ef_construction: int | None = None,
        train_size: int = 100_000,
        threads: int | None = None,
    ) -> DenseIndex:
        """Add chunks of vectors in internal-id order.

        ``threads=1`` makes HNSW construction deterministic (FAISS inserts in parallel otherwise),
        which is what a resumed build needs to reproduce an index byte for byte. Indexes that need
        training (IVF, PQ) are trained on the first ``train_size`` vectors, buffered for that.
        """
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise DenseIndexError(
                f"invalid FAISS factory string {factory!r} (examples: 'Flat', 'HNSW32', "
                f"'IVF1024,PQ32'): {exc}"
            ) from None
        hnsw = _hnsw(index)
        if hnsw is not None and ef_construction is not None:
            hnsw.efConstruction = ef_construction
        pending: list[np.ndarray] = []
        n_pending = 0
        with faiss_threads(threads):
            for chunk in vectors:
                chunk = _as_matrix(chunk, dim)
                if index.is_trained:
                    index.add(chunk)
                    continue
                pending.append(chunk)
                n_pending += len(chunk)
                if n_pending >= train_size:
                    _train_and_flush(index, pending, train_size)
                    pending, n_pending = [], 0
            if pending:
                _train_and_flush(index, pending, train_size)
        if not index.is_trained:
            raise DenseIndexError(f"factory {factory!r} needs training vectors, but none were given")
        ef = hnsw.efConstruction if hnsw is not None else None
        params = DenseParams(factory=factory, dim=dim, ntotal=int(index.ntotal), ef_construction=ef)
        return cls(index, params)

    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out / INDEX_FILE))
        (out / PARAMS_FILE).write_text(json.dumps(asdict(self.params), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> DenseIndex:
        src = Path(directory)
        if not (src / INDEX_FILE).is_file() or not (src / PARAMS_FILE).is_file():
            raise DenseIndexError(
                f"{src} is not a dense index (needs {INDEX_FILE} and {PARAMS_FILE}); "
                "build one with `trident index build --retrievers dense`"
            )
        params = DenseParams(**json.loads((src / PARAMS_FILE).read_text()))
        index = faiss.read_index(str(src / INDEX_FILE))
        if index.d != params.dim or index.ntotal != params.ntotal:
            raise DenseIndexError(
                f"{src}: index file holds {index.ntotal} x {index.d} but params say "
                f"{params.ntotal} x {params.dim}; rebuild the index"
            )
        return cls(index, params)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k internal ids and inner products for each query row, best first.

        Rows with fewer than k results are padded with id -1 and score -inf. ``ef_search`` and
        ``nprobe`` tune HNSW and IVF per call; ``allowed`` is a bool mask over internal ids.
        """
        if k < 1:
            raise DenseIndexError(f"k must be >= 1, got {k}")
        q = _as_matrix(vectors, self.dim)
        n = len(q)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (len(self),):
                raise DenseIndexError(
                    f"allowed mask must have one entry per document ({len(self)}), got {allowed.shape}"
                )
            allowed_ids = np.flatnonzero(allowed)
            if len(allowed_ids) <= EXACT_FILTER_MAX:
                if _hnsw(self.index) is not None:
                    return self._exact_subset(q, k, allowed_ids)
                if (ivf := _ivf(self.index)) is not None:
                    nprobe = ivf.nlist  # visit every list: the few allowed ids may be anywhere
        params = self._search_params(k, ef_search, nprobe, allowed)
        scores, ids = self.index.search(q, k, params=params)
        ids = ids.astype(np.int64, copy=False)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        assert scores.shape == (n, k)
        return ids, scores

    def _search_params(
        self, k: int, ef_search: int | None, nprobe: int | None, allowed: np.ndarray | None
    ) -> faiss.SearchParameters | None:
        sel = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        hnsw, ivf = _hnsw(self.index), _ivf(self.index)
        if hnsw is not None:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # swig class the stubs lack
            params.efSearch = max(k, ef_search or hnsw.efSearch)
        elif ivf is not None:
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe or ivf.nprobe
        elif sel is None:
            return None
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
            # The selector only borrows the bitmap; keep both alive as long as the params.
            params._keepalive = (sel, bitmap)
        return params

    def _exact_subset(
        self, q: np.ndarray, k: int, allowed_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among a few allowed documents (vectors reconstructed from the HNSW storage)."""
        ids = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        if len(allowed_ids) == 0:
            return ids, scores
        vecs = self.index.reconstruct_batch(allowed_ids)
        sims = q @ vecs.T
        kk = min(k, len(allowed_ids))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        ids[:, :kk] = allowed_ids[np.take_along_axis(top, order, axis=1)]
        scores[:, :kk] = np.take_along_axis(top_scores, order, axis=1)
        return ids, scores


def _hnsw(index: faiss.Index) -> faiss.HNSW | None:
    inner = faiss.downcast_index(index)
    return inner.hnsw if hasattr(inner, "hnsw") else None


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _train_and_flush(index: faiss.Index, pending: list[np.ndarray], train_size: int) -> None:
    """Train on the buffered vectors (once), then add them."""
    data = np.concatenate(pending)
    if not index.is_trained:
        log.info("training FAISS index on %d vectors", min(len(data), train_size))
        index.train(data[:train_size])
    index.add(data)
