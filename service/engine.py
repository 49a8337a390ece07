"""The search engine: one loaded index directory, its retrievers, query encoders and fusion.

A query runs every retriever it asks for at the same time (a small thread pool; Lucene, FAISS,
ONNX Runtime and the numba kernels release the GIL), so hybrid latency is close to that of the
slowest retriever rather than their sum. Then it fuses (``trident_search.service.fusion``), cuts the page and
fetches titles, text and metadata from the docstore.

Semantics worth knowing:

* **Filters** become one bool mask over internal ids (``DocStore.matching``), given to the sparse
  and dense indexes as ``allowed`` and to Lucene as an id set, so each retriever returns its top
  ``depth`` *among allowed documents*: a filtered query still returns k results when k exist.
* **Depth.** Each retriever returns ``max(depth, offset + k)`` hits, so deeper pages exist.
  Pagination is stable: the fused order breaks ties by docid, so pages of one query concatenate to
  the first ``offset + k`` results of a single larger request while ``offset + k <= depth``.
* **Fusion defaults** come from the request, else from the manifest's ``fusion`` key (written by
  ``trident eval beir --tune-on``), else RRF with k=60 and weight 1.0 per retriever.
* **Single-retriever modes** return the retriever's raw scores (ties again broken by docid).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.indexers.hits import Hit
from trident_search.service import fusion
from trident_search.service.errors import IndexLoadError, InvalidRequestError, NotFoundError
from trident_search.service.schemas import (
    DocumentResponse,
    FusionUsed,
    IndexInfo,
    Retriever,
    RetrieverExplanation,
    SearchHit,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger(__name__)

DEFAULT_DEPTH = 100
DEFAULT_FUSION: dict[str, Any] = {"method": "rrf", "rrf_k": fusion.DEFAULT_RRF_K, "normalization": "minmax"}


@dataclass(frozen=True, slots=True)
class RetrieverRun:
    """One retriever's hits for one query, and how long its stages took (ms)."""

    hits: list[Hit]
    timings: dict[str, float]
    warning: str | None = None


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class Engine:
    """Search over one index directory. Thread-safe: the server calls it from many threads."""

    def __init__(
        self,
        path: Path,
        manifest: Any,
        docstore: Any,
        *,
        bm25: Any = None,
        sparse: Any = None,
        dense: Any = None,
        sparse_encoder: Any = None,
        dense_encoder: Any = None,
        threads: int = 3,
        default_depth: int = DEFAULT_DEPTH,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.docstore = docstore
        self.bm25 = bm25
        self.sparse = sparse
        self.dense = dense
        self.sparse_encoder = sparse_encoder
        self.dense_encoder = dense_encoder
        self.default_depth = default_depth
        self.retrievers: list[Retriever] = [
            r for r, idx in (("bm25", bm25), ("sparse", sparse), ("dense", dense)) if idx is not None
        ]
        self._external = docstore.external_ids()
        # The calling thread runs one retriever itself, so the pool needs one thread fewer.
        self._pool = ThreadPoolExecutor(max(1, threads - 1), thread_name_prefix="trident-retriever")

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        *,
        query_backend: str = "onnx",
        threads: int = 3,
        retrievers: Sequence[str] | None = None,
        default_depth: int = DEFAULT_DEPTH,
    ) -> Engine:
        """Open an index directory written by ``trident index build``.

        Checks the manifest (format version, every listed file present with its recorded size) and
        raises :class:`IndexLoadError` with the fix when anything is off. ``retrievers`` loads a
        subset (default: all the index has). Query encoders use ``query_backend`` (int8 ONNX Runtime
        by default: about 1-3 ms per query instead of ~16 ms with torch).
        """
        from trident_search.indexers.docstore import DocStore, DocStoreError
        from trident_search.indexers.manifest import ManifestError, Manifest

        path = Path(index_dir)
        if not path.is_dir():
            raise IndexLoadError(f"no index at {path}: the folder does not exist")
        try:
            manifest = Manifest.load(path)
        except ManifestError as exc:
            raise IndexLoadError(str(exc)) from None
        _check_files(path, manifest.files)
        wanted = list(manifest.retrievers if retrievers is None else retrievers)
        missing = [r for r in wanted if r not in manifest.retrievers]
        if missing:
            raise IndexLoadError(f"index {path} has no {', '.join(missing)} retriever (it has "
                                 f"{', '.join(manifest.retrievers)})")
        params = manifest.params
        try:
            docstore = DocStore.open(path / "docs.sqlite")
        except DocStoreError as exc:
            raise IndexLoadError(str(exc)) from None
        parts: dict[str, Any] = {}
        try:
            if "bm25" in wanted:
                from trident_search.indexers.bm25 import BM25Index

                parts["bm25"] = BM25Index.load(path / "bm25")
            enc_common = dict(device="cpu", max_length=int(params.get("max_length", 256)), threads=1,
                              backend=query_backend)
            if "sparse" in wanted:
                from trident_search.encoders.sparse import SparseEncoder
                from trident_search.indexers.sparse import SparseIndex

                parts["sparse"] = SparseIndex.load(path / "sparse", mmap=True)
                parts["sparse_encoder"] = SparseEncoder(manifest.models["sparse"]["name"], **enc_common)
            if "dense" in wanted:
                from trident_search.encoders.dense import DenseEncoder
                from trident_search.indexers.dense import DenseIndex

                parts["dense"] = DenseIndex.load(path / "dense")
                parts["dense_encoder"] = DenseEncoder(manifest.models["dense"]["name"], **enc_common)
        except IndexLoadError:
            raise
        except Exception as exc:  # each part raises its own typed error; name the part and the fix
            raise IndexLoadError(f"cannot load {path}: {exc}") from exc
        for kind in ("sparse", "dense"):
            enc = parts.get(f"{kind}_encoder")
            built = manifest.models.get(kind, {}).get("revision")
            if enc is not None and built and enc.revision != built:
                log.warning("%s query encoder %s is revision %s, the index was built with %s; "
                            "rankings may suffer", kind, enc.name, enc.revision, built)
        engine = cls(path, manifest, docstore, threads=threads, default_depth=default_depth, **parts)
        engine.warm_up()
        log.info("loaded %s: %d documents, retrievers %s, query backend %s", path,
                 manifest.doc_count, ", ".join(engine.retrievers), query_backend)
        return engine

    def warm_up(self, rounds: int = 3) -> None:
        """Run a few searches so the first real ones do not pay for JIT compilation, ONNX Runtime's
        first-run allocations and cold pages (the first Lucene query is ~50x slower than later ones)."""
        texts = ["protein expression in human cells", "risk factors of heart disease", "vaccine trial"]
        for i in range(rounds):
            self.search(SearchRequest(query=texts[i % len(texts)], k=10, include_text=False))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.bm25 is not None:
            self.bm25.close()
        self.docstore.close()

    # -- retrieval ------------------------------------------------------------------------------
    def retrieve(
        self,
        query: str,
        retrievers: Sequence[Retriever],
        depths: dict[Retriever, int],
        allowed: np.ndarray | None = None,
        *,
        exact: bool = False,
        vectors: dict[Retriever, Any] | None = None,
        tuning: dict[Retriever, dict[str, Any]] | None = None,
    ) -> dict[Retriever, RetrieverRun]:
        """Run the retrievers concurrently; each returns its top ``depths[r]`` allowed documents.

        ``exact`` makes the sparse retriever score every document (its brute-force ground truth).
        ``tuning`` holds per-request index knobs (``RetrieverOptions.tuning``: sparse ``query_cut``,
        ``heap_factor``; dense ``ef_search``, ``nprobe``), passed as keywords to that index's search.
        ``vectors`` are query encodings made by the caller (the sharded router in ``cluster/``
        encodes once for all shards); retrievers without one encode the query here.
        """
        given, knobs = vectors or {}, tuning or {}
        tasks: dict[Retriever, Callable[[], RetrieverRun]] = {
            r: (lambda r=r: self._run_one(r, query, depths[r], allowed, exact, given.get(r), knobs.get(r)))
            for r in retrievers
        }
        names = list(tasks)
        futures: dict[Retriever, Future[RetrieverRun]] = {
            r: self._pool.submit(tasks[r]) for r in names[1:]
        }
        out = {names[0]: tasks[names[0]]()} if names else {}
        for r, fut in futures.items():
            out[r] = fut.result()
        return {r: out[r] for r in retrievers}

    def _run_one(
        self, name: Retriever, query: str, depth: int, allowed: np.ndarray | None, exact: bool = False,
        vector: Any = None, tuning: dict[str, Any] | None = None,
    ) -> RetrieverRun:
        if name == "bm25":
            return self._run_bm25(query, depth, allowed)
        encoder = self.sparse_encoder if name == "sparse" else self.dense_encoder
        start = time.perf_counter()
        if vector is None:
            vector = encoder.encode_queries([query])
        encode_ms = _ms(start)
        start = time.perf_counter()
        if name == "sparse":
            ids, scores = self.sparse.search(vector, depth, allowed=allowed, exact=exact, **(tuning or {}))
        else:
            ids, scores = self.dense.search(vector, depth, allowed=allowed, **(tuning or {}))
            ids, scores = ids[0], scores[0]
        keep = ids >= 0
        hits = [Hit(str(d), float(s)) for d, s in zip(self._external[ids[keep]], scores[keep], strict=True)]
        return RetrieverRun(hits, {f"encode_{name}": encode_ms, name: _ms(start)})

    def _run_bm25(self, query: str, depth: int, allowed: np.ndarray | None) -> RetrieverRun:
        start = time.perf_counter()
        filter_ids = None if allowed is None else self._external[allowed].tolist()
        hits = self.bm25.search(query, depth, filter_ids=filter_ids)
        warning = None
        if self.bm25.prepare(query).truncated:
            warning = "bm25: the query was cut to its first 512 terms"
        return RetrieverRun(hits, {"bm25": _ms(start)}, warning)

    # -- search ---------------------------------------------------------------------------------
    def search(self, request: SearchRequest) -> SearchResponse:
        """Answer one request (see the module docstring for filters, depth and fusion defaults)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        names = self._retrievers_for(request)
        hybrid = request.mode == "hybrid"
        needed = request.offset + request.k
        depths: dict[Retriever, int] = {
            r: max(request.options(r).depth or self.default_depth, needed) if hybrid else needed
            for r in names
        }
        allowed = None
        if request.filters:
            start = time.perf_counter()
            allowed = self._mask(request.filters)
            timings["filter"] = _ms(start)
        runs = self.retrieve(
            request.query, names, depths, allowed, exact=request.options("sparse").exact,
            tuning={r: request.options(r).tuning() for r in names},
        )
        for run in runs.values():
            timings.update(run.timings)

        start = time.perf_counter()
        used = self._fusion_for(request, names) if hybrid else None
        if used is None:
            fused = fusion.fuse({names[0]: runs[names[0]].hits}, "interpolation", normalization="none")
        else:
            fused = fusion.fuse(
                {r: runs[r].hits for r in names}, used.method, weights=used.weights,
                rrf_k=used.rrf_k or fusion.DEFAULT_RRF_K, normalization=used.normalization or "minmax",
            )
        page = fused[request.offset : needed]
        timings["fusion"] = _ms(start)

        start = time.perf_counter()
        hits = self._hydrate(page, request)
        timings["fetch"] = _ms(start)
        timings["total"] = _ms(t0)
        return SearchResponse(
            query=request.query, mode=request.mode, retrievers=names, k=request.k,
            offset=request.offset, total=len(fused), hits=hits, fusion=used, timings_ms=timings,
            warnings=[run.warning for run in runs.values() if run.warning],
        )

    def search_batch(self, requests: Sequence[SearchRequest]) -> list[SearchResponse]:
        """Answer requests in order; each answer is exactly what :meth:`search` gives for it."""
        return [self.search(r) for r in requests]

    def _retrievers_for(self, request: SearchRequest) -> list[Retriever]:
        if request.mode != "hybrid":
            if request.retrievers is not None:
                raise InvalidRequestError(
                    f"retrievers applies to mode 'hybrid' only, not {request.mode!r}", field="retrievers")
            if request.mode not in self.retrievers:
                raise InvalidRequestError(
                    f"this index has no {request.mode} retriever; available: "
                    f"{', '.join(self.retrievers)} or hybrid", field="mode")
            return [request.mode]
        names = list(request.retrievers or self.retrievers)
        absent = [r for r in names if r not in self.retrievers]
        if absent:
            raise InvalidRequestError(
                f"this index has no {', '.join(absent)} retriever; available: {', '.join(self.retrievers)}",
                field="retrievers")
        return names

    def _mask(self, filters: dict[str, Any]) -> np.ndarray | None:
        from trident_search.indexers.docstore import FilterError

        try:
            mask = self.docstore.matching(filters)
        except FilterError as exc:
            raise InvalidRequestError(str(exc), field="filters") from None
        # A filter every document passes costs nothing downstream (Lucene would get every id).
        return None if mask.all() else mask

    def _tuned_fusion(self) -> dict[str, Any] | None:
        tuned = self.manifest.extra.get("fusion")
        return tuned if isinstance(tuned, dict) and tuned.get("method") in ("rrf", "interpolation") else None

    def default_fusion(self) -> dict[str, Any]:
        """The manifest's tuned ``fusion`` entry, or the built-in default (RRF, k=60, equal weights)."""
        return self._tuned_fusion() or dict(DEFAULT_FUSION)

    def _fusion_for(self, request: SearchRequest, names: list[Retriever]) -> FusionUsed:
        """Request values first, then the manifest's tuned values for that method, then defaults.

        The manifest entry (``trident_search.eval.tuning.manifest_fusion``) looks like ``{"method": "rrf",
        "rrf": {"weights": {...}, "rrf_k": 20}, "interpolation": {"weights": {...},
        "normalization": "minmax"}}``.
        """
        tuned = self._tuned_fusion()
        method = request.fusion.method or (tuned or DEFAULT_FUSION)["method"]
        per_method = (tuned or {}).get(method) or {}
        tuned_weights = per_method.get("weights") or {}
        weights = {r: float(_first(request.options(r).weight, tuned_weights.get(r), 1.0)) for r in names}
        source = "request" if request.fusion.method else ("manifest" if tuned else "default")
        if method == "rrf":
            k = _first(request.fusion.rrf_k, per_method.get("rrf_k"), fusion.DEFAULT_RRF_K)
            return FusionUsed(method="rrf", weights=weights, rrf_k=float(k), source=source)
        norm = _first(request.fusion.normalization, per_method.get("normalization"), "minmax")
        return FusionUsed(method="interpolation", weights=weights, normalization=norm, source=source)

    def _hydrate(self, page: list[fusion.FusedHit], request: SearchRequest) -> list[SearchHit]:
        if not page:
            return []
        internal = self.docstore.internal_ids([f.docid for f in page])
        docs = self.docstore.get(internal)
        out = []
        for rank, (f, doc) in enumerate(zip(page, docs, strict=True), start=request.offset + 1):
            explain = None
            if request.explain:
                explain = {
                    name: RetrieverExplanation(rank=c.rank, raw_score=c.raw,
                                               normalized_score=c.normalized, weighted_score=c.weighted)
                    for name, c in f.contributions.items()
                }
            out.append(SearchHit(
                id=f.docid, rank=rank, score=f.score, title=doc.title,
                text=doc.text if request.include_text else None, metadata=doc.metadata, explain=explain,
            ))
        return out

    # -- documents and info ---------------------------------------------------------------------
    def document(self, doc_id: str) -> DocumentResponse:
        doc = self.docstore.get_by_external(doc_id)
        if doc is None:
            raise NotFoundError(f"no document with id {doc_id!r} in this index", field="doc_id")
        return DocumentResponse(id=doc.id, title=doc.title, text=doc.text, metadata=doc.metadata)

    def info(self) -> IndexInfo:
        encoders = {}
        for kind, enc in (("sparse", self.sparse_encoder), ("dense", self.dense_encoder)):
            if enc is not None:
                encoders[kind] = f"{enc.name} ({getattr(enc, 'backend', 'torch')})"
        if self.bm25 is not None:
            encoders["bm25"] = "Lucene analyzer"
        return IndexInfo(
            path=str(self.path), doc_count=self.manifest.doc_count, retrievers=self.retrievers,
            default_fusion=self.default_fusion(), query_encoders=encoders,
            manifest=self.manifest.to_dict(),
        )


def _first(*values: Any) -> Any:
    """The first value that is not None (0 and 0.0 are values)."""
    return next(v for v in values if v is not None)


def _check_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    """Every file the manifest lists exists with its recorded size (checksums: `trident index info --verify`)."""
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            raise IndexLoadError(f"index {root} is incomplete: {rel} is missing; rebuild it")
        if p.stat().st_size != meta.get("size"):
            raise IndexLoadError(f"index {root} is damaged: {rel} has size {p.stat().st_size}, "
                                 f"manifest says {meta.get('size')}; rebuild it")
