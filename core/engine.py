"""The search engine: per-request planning, fusion, pagination and explain over a retrieval backend.

The engine does not know where runs and documents come from. It is composed of a
:class:`RetrievalBackend` (which runs retrievers for a query: one local index directory, or shards
on Ray) and a :class:`DocumentSource` (which returns stored documents by id), so single-node and
sharded serving share every query-time rule below.

* **Filters** go to the backend with the query; each retriever returns its top ``depth`` *among
  allowed documents*, so a filtered query still returns k results when k exist.
* **Depth.** Each retriever returns ``max(depth, offset + k)`` hits, so deeper pages exist.
  Pagination is stable: the fused order breaks ties by docid, so pages of one query concatenate to
  the first ``offset + k`` results of a single larger request while ``offset + k <= depth``.
* **Fusion defaults** come from the request, else from the manifest's tuned entry
  (:class:`~trident_search.core.tuned.TunedFusion`), else RRF with k=60 and weight 1.0 per retriever.
* **Single-retriever modes** return the retriever's raw scores (ties again broken by docid).
* **After fusion**, in this order: ``min_score`` drops hits below it (hybrid: on the [0, 1] scale of
  ``normalized_score``, see :func:`fusion.max_score`; single modes: raw scores); ``facets`` count
  values over every document matching the filters and over the remaining fused candidates;
  ``collapse`` keeps the best hit per field value (a document without the field is a group of its
  own) and pages over groups. Requests that facet or collapse fetch ``max(depth, offset + k)``
  candidates in single-retriever modes too, so groups and candidate counts have the same depth.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from trident_search.core import fusion
from trident_search.core.local import LocalIndex, Retrieved, RetrieverCall, ms_since
from trident_search.core.schemas import (
    DocumentResponse,
    FusionUsed,
    IndexInfo,
    RetrieverExplanation,
    SearchHit,
    SearchRequestBase,
    SearchResponse,
    search_request_model,
)
from trident_search.core.tuned import TunedFusion
from trident_search.errors import InvalidRequestError, NotFoundError
from trident_search.indexers import filters as filters_mod
from trident_search.indexers.docstore import StoredDoc
from trident_search.indexers.hits import Hit
from trident_search.indexers.manifest import Manifest

log = logging.getLogger(__name__)

DEFAULT_DEPTH = 100
DEFAULT_FUSION: dict[str, Any] = {"method": "rrf", "rrf_k": fusion.DEFAULT_RRF_K, "normalization": "minmax"}
WARM_UP_QUERIES = ("protein expression in human cells", "risk factors of heart disease", "vaccine trial")


class RetrievalBackend(Protocol):
    """Runs retrievers for one query: a :class:`LocalIndex`, or the sharded router in ``cluster/``."""

    retrievers: list[str]

    def retrieve(self, query: str, calls: Mapping[str, RetrieverCall],
                 filters: Mapping[str, Any]) -> Retrieved: ...


class DocumentSource(Protocol):
    """Stored documents by external id."""

    def fetch(self, ids: Sequence[str]) -> list[StoredDoc]: ...
    def document(self, doc_id: str) -> StoredDoc | None: ...
    def describe(self) -> dict[str, Any]: ...


class Engine:
    """Search over one backend and document source. Thread-safe: the server calls it from many threads."""

    def __init__(self, backend: RetrievalBackend, documents: DocumentSource, *,
                 manifest: Manifest | None = None, tuned: TunedFusion | None = None,
                 default_depth: int = DEFAULT_DEPTH, owned: Sequence[Any] = ()) -> None:
        self.backend = backend
        self.documents = documents
        self.manifest = manifest
        self.tuned = tuned
        self.default_depth = default_depth
        self.retrievers = list(backend.retrievers)
        self._owned = list(owned)

    @classmethod
    def load(cls, index_dir: Any, *, query_backend: str = "onnx", threads: int = 3,
             retrievers: Sequence[str] | None = None, default_depth: int = DEFAULT_DEPTH,
             warm_up: bool = True) -> Engine:
        """Open an index directory (see :meth:`LocalIndex.open`) and optionally warm it up."""
        index = LocalIndex.open(index_dir, query_backend=query_backend, threads=threads, retrievers=retrievers)
        engine = cls(index, index, manifest=index.manifest, tuned=TunedFusion.from_manifest(index.manifest),
                     default_depth=default_depth, owned=[index])
        if warm_up:
            engine.warm_up()
        return engine

    def warm_up(self, rounds: int = 3) -> None:
        """Run a few searches in every mode so the first real ones do not pay for JIT compilation,
        ONNX Runtime's first-run allocations and cold pages (exact sparse search included), and load
        the metadata columns filters and facets use (a local index's docstore)."""
        columns = getattr(getattr(self.backend, "docstore", None), "columns", None)
        if columns is not None:
            start = time.perf_counter()
            fields = columns.preload()
            log.info("loaded metadata columns %s in %.0f ms", ", ".join(fields) or "(none)", ms_since(start))
        request = search_request_model()
        for i in range(rounds):
            text = WARM_UP_QUERIES[i % len(WARM_UP_QUERIES)]
            self.search(request(query=text, k=10, include_text=False))
            for name in self.retrievers:
                opts = {"exact": True} if "exact" in self._options_type(name).model_fields else {}
                self.search(request.model_validate(
                    {"query": text, "mode": name, "k": 10, "include_text": False, **({name: opts} if opts else {})}))

    @staticmethod
    def _options_type(name: str) -> Any:
        from trident_search.indexers.retriever import get

        return get(name).options

    def close(self) -> None:
        for part in self._owned:
            part.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- search ---------------------------------------------------------------------------------
    def search(self, request: SearchRequestBase) -> SearchResponse:
        """Answer one request (see the module docstring for filters, depth and fusion defaults)."""
        t0 = time.perf_counter()
        names = self._retrievers_for(request)
        if request.filters:
            filters_mod.parse(request.filters)  # a bad filter is named before any retriever runs
        hybrid = request.mode == "hybrid"
        deep = hybrid or request.collapse is not None or bool(request.facets)
        needed = request.offset + request.k
        calls = {
            r: RetrieverCall(
                max(request.options(r).depth or self.default_depth, needed) if deep else needed,
                request.options(r),
            )
            for r in names
        }
        if request.facets and not hasattr(self.documents, "facets"):
            raise InvalidRequestError("facets are not available on this backend (sharded indexes)",
                                      field="facets")
        got = self.backend.retrieve(request.query, calls, request.filters)
        timings = dict(got.timings)
        for run in got.runs.values():
            timings.update(run.timings)

        start = time.perf_counter()
        used = self.fusion_for(request, names) if hybrid else None
        if used is None:
            fused = fusion.fuse({names[0]: got.runs[names[0]].hits}, "interpolation", normalization="none")
            scale = None
        else:
            fused = fusion.fuse(
                {r: got.runs[r].hits for r in names}, used.method, weights=used.weights,
                rrf_k=used.rrf_k if used.rrf_k is not None else fusion.DEFAULT_RRF_K,
                normalization=used.normalization or "minmax", normalizers=used.normalizers,
            )
            scale = used.score_scale
        if request.min_score is not None:
            fused = [f for f in fused if (f.score / scale if scale else f.score) >= request.min_score]
        timings["fusion"] = ms_since(start)

        facets = None
        if request.facets:
            start = time.perf_counter()
            facets = self.documents.facets(  # type: ignore[attr-defined]
                request.filters, request.facets, [f.docid for f in fused])
            timings["facets"] = ms_since(start)

        groups: list[list[fusion.FusedHit]] | None = None
        if request.collapse is not None:
            start = time.perf_counter()
            groups = self._collapse(fused, request.collapse.field)
            timings["collapse"] = ms_since(start)
            total = len(groups)
            page = [g[0] for g in groups[request.offset : needed]]
        else:
            total = len(fused)
            page = fused[request.offset : needed]

        start = time.perf_counter()
        hits = self._hydrate(page, request, scale)
        if groups is not None and request.collapse is not None and request.collapse.inner_hits:
            position = {f.docid: i for i, f in enumerate(fused, start=1)}
            for hit, group in zip(hits, groups[request.offset : needed], strict=True):
                inner = group[1 : 1 + request.collapse.inner_hits]
                hit.inner_hits = self._hydrate(inner, request, scale)
                for h, f in zip(hit.inner_hits, inner, strict=True):
                    h.rank = position[f.docid]
        timings["fetch"] = ms_since(start)
        timings["total"] = ms_since(t0)
        return SearchResponse(
            query=request.query, mode=request.mode, retrievers=names, k=request.k, facets=facets,
            offset=request.offset, total=total, hits=hits, fusion=used, timings_ms=timings,
            warnings=[run.warning for run in got.runs.values() if run.warning],
            partial=bool(got.missing_shards), missing_shards=got.missing_shards,
        )

    def runs(self, query: str, depth: int, names: Sequence[str] | None = None) -> dict[str, list[Hit]]:
        """Each retriever's top ``depth`` hits with its default options, unfused (eval tunes on these)."""
        from trident_search.indexers.retriever import get

        names = list(names or self.retrievers)
        calls = {n: RetrieverCall(depth, get(n).options()) for n in names}
        got = self.backend.retrieve(query, calls, {})
        return {n: got.runs[n].hits for n in names}

    def search_batch(self, requests: Sequence[SearchRequestBase]) -> list[SearchResponse]:
        """Answer requests in order; each answer is exactly what :meth:`search` gives for it."""
        out = []
        for i, r in enumerate(requests):
            try:
                out.append(self.search(r))
            except InvalidRequestError as exc:  # name the request in the batch
                raise type(exc)(exc.message, field=f"requests.{i}.{exc.field}" if exc.field else None) from None
        return out

    def _collapse(self, fused: list[fusion.FusedHit], field: str) -> list[list[fusion.FusedHit]]:
        """Fused hits grouped by their value of ``field``, groups in the order of their best hit."""
        ids = [f.docid for f in fused]
        lookup = getattr(self.documents, "field_values", None)
        if lookup is not None:
            values = lookup(ids, field)
        else:
            values = [_first_value(d.metadata, field) for d in self.documents.fetch(ids)]
        groups: dict[Any, list[fusion.FusedHit]] = {}
        for f, v in zip(fused, values, strict=True):
            key = ("missing", f.docid) if v is None else ("value", type(v) is bool, v)
            groups.setdefault(key, []).append(f)
        return list(groups.values())

    def _retrievers_for(self, request: SearchRequestBase) -> list[str]:
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

    def default_fusion(self) -> dict[str, Any]:
        """The manifest's tuned fusion entry, or the built-in default (RRF, k=60, equal weights)."""
        return self.tuned.model_dump(exclude_none=True) if self.tuned else dict(DEFAULT_FUSION)

    def fusion_for(self, request: SearchRequestBase, names: list[str]) -> FusionUsed:
        """Request values first, then the manifest's tuned values for that method, then defaults."""
        tuned = self.tuned
        method = request.fusion.method or (tuned.method if tuned else DEFAULT_FUSION["method"])
        per_method = tuned.for_method(method) if tuned else None
        tuned_weights = per_method.weights if per_method else {}
        weights = {r: float(_first(request.options(r).weight, tuned_weights.get(r), 1.0)) for r in names}
        # "manifest" whenever tuned values shape the result, even when the request named the method.
        from_manifest = tuned is not None and (
            request.fusion.method is None or bool(per_method and per_method.model_dump(exclude_defaults=True)))
        source = "manifest" if from_manifest else ("request" if request.fusion.method else "default")
        if method == "rrf":
            k = _first(request.fusion.rrf_k, per_method.rrf_k if per_method else None, fusion.DEFAULT_RRF_K)
            return FusionUsed(method="rrf", weights=weights, rrf_k=float(k), source=source,
                              score_scale=fusion.max_score("rrf", weights, float(k)))
        norm = _first(request.fusion.normalization, per_method.normalization if per_method else None, "minmax")
        normalizers = request.fusion.normalizers
        if normalizers is None and per_method is not None:
            normalizers = getattr(per_method, "normalizers", None)
        if normalizers:
            for name in normalizers:
                if name not in names:
                    raise InvalidRequestError(
                        f"fusion.normalizers names {name!r}, which is not fused; fused: {', '.join(names)}",
                        field=f"fusion.normalizers.{name}")
            normalizers = {r: normalizers[r] for r in names if r in normalizers}
        return FusionUsed(method="interpolation", weights=weights, normalization=norm,
                          normalizers=normalizers or None, source=source,
                          score_scale=fusion.max_score("interpolation", weights))

    def _hydrate(self, page: list[fusion.FusedHit], request: SearchRequestBase,
                 scale: float | None = None) -> list[SearchHit]:
        if not page:
            return []
        docs = self.documents.fetch([f.docid for f in page])
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
                normalized_score=f.score / scale if scale else None,
                text=doc.text if request.include_text else None, metadata=doc.metadata, explain=explain,
            ))
        return out

    # -- documents and info ---------------------------------------------------------------------
    def document(self, doc_id: str) -> DocumentResponse:
        doc = self.documents.document(doc_id)
        if doc is None:
            raise NotFoundError(f"no document with id {doc_id!r} in this index", field="doc_id")
        return DocumentResponse(id=doc.id, title=doc.title, text=doc.text, metadata=doc.metadata)

    def info(self) -> IndexInfo:
        d = self.documents.describe()
        return IndexInfo(
            path=d["path"], doc_count=d["doc_count"], retrievers=self.retrievers,
            default_fusion=self.default_fusion(), query_encoders=d["query_encoders"], manifest=d["manifest"],
        )


def _first_value(metadata: Mapping[str, Any], field: str) -> Any:
    value: Any = metadata
    for part in field.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, list):
        value = next((v for v in value if v is not None and not isinstance(v, (list, dict))), None)
    return None if isinstance(value, dict) else value


def _first(*values: Any) -> Any:
    """The first value that is not None (0 and 0.0 are values)."""
    return next(v for v in values if v is not None)
