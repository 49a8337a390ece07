"""One router per resource: search, documents, index, ops.

Request models come from the retriever registry (``core.schemas.search_request_model``), so a
registered retriever shows up in the POST body, the GET parameters and the OpenAPI document with no
change here. (No ``from __future__ import annotations``: the routes are annotated with models built
at app creation, which FastAPI must see as objects, not strings.)
"""
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError, create_model
from starlette.concurrency import run_in_threadpool

from trident_search.core.schemas import (
    BatchSearchResponse,
    DocumentResponse,
    IndexInfo,
    Normalization,
    SearchRequestBase,
    SearchResponse,
    batch_request_model,
    search_request_model,
)
from trident_search.errors import InvalidRequestError, NotFoundError
from trident_search.indexers.retriever import registered
from trident_search.service.errors import ErrorResponse
from trident_search.service.lifecycle import Generation
from trident_search.service.metrics import Metrics
from trident_search.settings import Settings


class SearchEngine(Protocol):
    """What the routes need from an engine (``trident_search.core.engine.Engine``, or a test double)."""

    retrievers: list[str]

    def search(self, request: SearchRequestBase) -> SearchResponse: ...
    def search_batch(self, requests: Sequence[SearchRequestBase]) -> list[SearchResponse]: ...
    def document(self, doc_id: str) -> DocumentResponse: ...
    def info(self) -> IndexInfo: ...
    def close(self) -> None: ...


Lease = Callable[[Request], AbstractAsyncContextManager[Generation]]
"""The serving generation for one request, held until it ends (a hot swap never changes it)."""
Admit = Callable[[], AbstractAsyncContextManager[None]]
"""A slot of the admission queue (429 with Retry-After when it is full)."""

OVERLOADED = {429: {"model": ErrorResponse, "description": "Too many searches running and queued; "
                    "retry after the `Retry-After` header's seconds."}}


def check_limits(req: SearchRequestBase, settings: Settings, prefix: str = "") -> None:
    """Operator-configured limits; each violation is a 422 naming the field and the limit."""
    s = settings.search
    checks: list[tuple[str, int, int, str]] = [
        ("query", len(req.query), s.max_query_chars, "TRIDENT_MAX_QUERY_CHARS characters"),
        ("k", req.k, s.max_k, "TRIDENT_MAX_K"),
        ("offset", req.offset, s.max_offset, "TRIDENT_MAX_OFFSET"),
    ]
    for name in registered():
        depth = getattr(getattr(req, name, None), "depth", None)
        if depth is not None:
            checks.append((f"{name}.depth", depth, s.max_depth, "TRIDENT_MAX_DEPTH"))
    for field, value, limit, setting in checks:
        if value > limit:
            raise InvalidRequestError(
                f"{prefix}{field} is {value}, over the limit of {limit} ({setting})", field=f"{prefix}{field}"
            )


def _json(model: BaseModel) -> Response:
    """Serialise an engine-built response directly: it is a validated model already, and FastAPI
    would validate it again against ``response_model`` (which stays declared for the docs)."""
    return Response(model.model_dump_json(), media_type="application/json")


def get_params_model(settings: Settings) -> type[BaseModel]:
    """The GET /v1/search parameters: the POST fields, flattened (``dense_weight``, ``sparse_query_cut``)."""
    specs = registered()
    names = tuple(specs)
    s = settings.search
    fields: dict[str, Any] = {
        "q": (str, Field(..., min_length=1, max_length=s.max_query_chars, description="Free-text query.")),
        "mode": (Literal[(*names, "hybrid")], "hybrid"),  # type: ignore[valid-type]
        "k": (int, Field(10, ge=1, le=s.max_k)),
        "offset": (int, Field(0, ge=0, le=s.max_offset)),
        "retrievers": (str | None, Field(None, description="Hybrid: comma-separated subset, e.g. `bm25,dense`.")),
        "fusion": (Literal["rrf", "interpolation"] | None, None),
        "rrf_k": (float | None, Field(None, ge=0, le=1e6)),
        "normalization": (Normalization | None, None),
        "filters": (str | None, Field(None, description='Metadata filters as JSON, e.g. `{"year": {"gte": 2020}}`.')),
        "min_score": (float | None, Field(None, description="Drop hits below this final score (see POST).")),
        "facets": (str | None, Field(None, description="Comma-separated fields to count values of, e.g. `lang,year`.")),
        "collapse": (str | None, Field(None, description="Keep the best hit per value of this field.")),
        "inner_hits": (int | None, Field(None, ge=0, le=100, description="With collapse: next best hits per group.")),
        "explain": (bool, False),
        "include_text": (bool, True),
    }
    for name, spec in specs.items():
        for field, info in spec.options.model_fields.items():
            copied = Field(None, description=f"{name}: {info.description or field}",
                           json_schema_extra=None, **_bounds(info))
            if field == "depth":
                copied = Field(None, ge=1, le=s.max_depth, description=f"{name}: {info.description}")
            fields[f"{name}_{field}"] = (info.annotation, copied)
    return create_model("SearchParams", __config__={"extra": "forbid"}, **fields)


def _bounds(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in info.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(meta, key, None) is not None:
                out[key] = getattr(meta, key)
    return out


def _from_get(params: BaseModel) -> dict[str, Any]:
    """The POST body equal to a GET request's parameters."""
    p = params.model_dump()
    filters: Any = {}
    if p["filters"]:
        try:
            filters = json.loads(p["filters"])
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"filters is not valid JSON: {exc.msg}", field="filters") from None
    body: dict[str, Any] = {
        "query": p["q"], "mode": p["mode"], "k": p["k"], "offset": p["offset"], "filters": filters,
        "explain": p["explain"], "include_text": p["include_text"],
        "fusion": {n: p[g] for n, g in (("method", "fusion"), ("rrf_k", "rrf_k"),
                                        ("normalization", "normalization")) if p[g] is not None},
    }
    if p["retrievers"]:
        body["retrievers"] = [r.strip() for r in p["retrievers"].split(",") if r.strip()]
    if p["min_score"] is not None:
        body["min_score"] = p["min_score"]
    if p["facets"]:
        body["facets"] = [f.strip() for f in p["facets"].split(",") if f.strip()]
    if p["collapse"]:
        body["collapse"] = {"field": p["collapse"], **({"inner_hits": p["inner_hits"]} if p["inner_hits"] else {})}
    for name, spec in registered().items():
        opts = {f: p[f"{name}_{f}"] for f in spec.options.model_fields if p[f"{name}_{f}"] is not None}
        if opts:
            body[name] = opts
    return body


def _get_param(field: str | None) -> str | None:
    """Name a SearchRequest field the way the GET endpoint's parameters spell it."""
    if field is None:
        return None
    if field == "query":
        return "q"
    if field == "fusion.method":
        return "fusion"
    head, _, tail = field.partition(".")
    if head == "fusion":
        return tail
    if head in registered() and tail:
        return f"{head}_{tail}"
    if head == "collapse" and tail == "inner_hits":
        return "inner_hits"
    return head if head in {"filters", "retrievers", "facets", "collapse", "min_score"} else field


def search_router(settings: Settings, lease: Lease, admit: Admit, metrics: Metrics,
                  validation_details: Callable[..., list[dict[str, Any]]]) -> APIRouter:
    SearchRequest = search_request_model()
    BatchSearchRequest = batch_request_model()
    SearchParams = get_params_model(settings)
    router = APIRouter(tags=["search"], responses=OVERLOADED)

    async def run_search(body: SearchRequestBase, request: Request) -> Response:
        check_limits(body, settings)
        async with admit(), lease(request) as gen:
            resp = await run_in_threadpool(gen.bound(gen.engine.search), body)
        metrics.observe_search(resp)
        return _json(resp)

    @router.post("/search", response_model=SearchResponse)
    async def search(body: SearchRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Search with any retriever or a fusion of them; see the request schema for every option."""
        return await run_search(body, request)

    @router.get("/search", response_model=SearchResponse)
    async def search_get(request: Request, params: Annotated[SearchParams, Query()]) -> Response:  # type: ignore[valid-type]
        """The same search as POST, from query parameters (convenient for curl and browsers)."""
        try:
            body = SearchRequest.model_validate(_from_get(params))
        except ValidationError as exc:
            details = validation_details(exc.errors(), rooted=False)
            for d in details:
                d["field"] = _get_param(d["field"])
            first = details[0]
            raise InvalidRequestError(
                f"{first['message']} (parameter '{first['field']}')", field=first["field"]
            ) from None
        return await run_search(body, request)

    @router.post("/search/batch", response_model=BatchSearchResponse)
    async def search_batch(body: BatchSearchRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Several searches in one call; each result equals what `POST /v1/search` returns for it."""
        requests = body.requests  # type: ignore[attr-defined]
        if len(requests) > settings.server.max_batch:
            raise InvalidRequestError(
                f"requests holds {len(requests)} searches, over the limit of {settings.server.max_batch} "
                "(TRIDENT_MAX_BATCH)", field="requests")
        for i, req in enumerate(requests):
            check_limits(req, settings, prefix=f"requests.{i}.")
        start = time.perf_counter()
        async with admit(), lease(request) as gen:
            results = await run_in_threadpool(gen.bound(gen.engine.search_batch), requests)
        for resp in results:
            metrics.observe_search(resp)
        total_ms = (time.perf_counter() - start) * 1e3
        return _json(BatchSearchResponse(results=results, timings_ms={"total": total_ms}))

    return router


def documents_router(lease: Lease) -> APIRouter:
    router = APIRouter(tags=["documents"])

    @router.get("/documents/{doc_id:path}", response_model=DocumentResponse,
                responses={404: {"model": ErrorResponse, "description": "No such document."}})
    async def get_document(doc_id: str, request: Request) -> DocumentResponse:
        """One stored document by its corpus `_id`."""
        async with lease(request) as gen:
            return await run_in_threadpool(gen.bound(gen.engine.document), doc_id)

    return router


def _info(gen: Generation) -> IndexInfo:
    return gen.engine.info().model_copy(update={"generation": gen.number})


def index_router(lease: Lease) -> APIRouter:
    router = APIRouter(tags=["index"])

    @router.get("/index", response_model=IndexInfo)
    async def index_info(request: Request) -> IndexInfo:
        """The loaded index: manifest, document count, retrievers, default fusion, query encoders, and
        the generation served (1 at start, +1 per hot swap)."""
        async with lease(request) as gen:
            return _info(gen)

    return router


def admin_router(reload: Callable[[Request], Awaitable[Generation]]) -> APIRouter:
    router = APIRouter(tags=["admin"])

    @router.post("/admin/reload", response_model=IndexInfo,
                 responses={503: {"model": ErrorResponse, "description": "The new index could not be "
                                  "opened (the previous generation keeps serving) or the server is stopping."}})
    async def reload_index(request: Request) -> IndexInfo:
        """Open the index now published at the served path, warm it and swap it in between requests.
        Requests in flight finish on their generation; a failed open keeps the old one serving."""
        return _info(await reload(request))

    return router


def ops_router(settings: Settings, ready: Callable[[Request], Generation], metrics: Metrics) -> APIRouter:
    from trident_search.service.metrics import CONTENT_TYPE

    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (whether or not an index is loaded)."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, str]:
        """Readiness: 200 only once the index is loaded and searchable, and not while shutting down."""
        ready(request)
        return {"status": "ready", "index": str(settings.server.index)}

    @router.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests, latency per route, per search stage and mode, errors."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router


# -- the search page ----------------------------------------------------------------------------
_STATIC = Path(__file__).resolve().parent / "static"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


def page_router(settings: Settings) -> APIRouter:
    """The search page at ``/`` (``service/static/``: HTML, CSS and plain JavaScript over the JSON
    API). Public like ``/healthz``: it holds no data; its searches send the API key the user types."""
    router = APIRouter(include_in_schema=False)
    header = json.dumps(settings.server.api_key_header)[1:-1].replace('"', "&quot;")

    @router.get("/")
    async def page() -> Response:
        html = (_STATIC / "index.html").read_text(encoding="utf-8").replace("{{API_KEY_HEADER}}", header)
        return Response(html, media_type="text/html; charset=utf-8")

    @router.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in _ASSETS:
            raise NotFoundError(f"no static file {name!r}", field="name")
        return Response((_STATIC / name).read_bytes(), media_type=f"{_ASSETS[name]}; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    return router
