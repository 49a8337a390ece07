"""The FastAPI app: ``create_app(settings)`` builds it, its lifespan loads the engine into app.state.

The index loads on a worker thread after startup, so ``/healthz`` answers at once and ``/readyz``
says 503 until the engine is ready. A missing or broken index is logged as one clear line and
turns every search into a 503 that says how to build one; the process keeps running.

Every error, whatever raised it, leaves as the same envelope (``schemas.ErrorResponse``) and is
mapped to its status in one place, ``_error_response``. Search is CPU-bound and runs on the thread
pool, never on the event loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trident_search.service.config import Settings
from trident_search.service.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotReadyError,
    PayloadTooLargeError,
    PermissionDeniedError,
    TridentError,
)
from trident_search.service.metrics import CONTENT_TYPE, Metrics
from trident_search.service.schemas import (
    RETRIEVERS,
    BatchSearchRequest,
    BatchSearchResponse,
    DocumentResponse,
    ErrorResponse,
    IndexInfo,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger(__name__)


class SearchEngine(Protocol):
    """What the app needs from an engine (``trident_search.service.engine.Engine``, or a test double)."""

    def search(self, request: SearchRequest) -> SearchResponse: ...
    def search_batch(self, requests: Sequence[SearchRequest]) -> list[SearchResponse]: ...
    def document(self, doc_id: str) -> DocumentResponse: ...
    def info(self) -> IndexInfo: ...
    def close(self) -> None: ...


EngineLoader = Callable[[Settings], SearchEngine]


def load_engine(settings: Settings) -> SearchEngine:
    """The production loader: the real engine over ``settings.index``."""
    from trident_search.service.engine import Engine  # heavy imports (Lucene, FAISS, ONNX) only when serving

    return Engine.load(
        settings.index,
        query_backend=settings.query_backend,
        threads=settings.search_threads,
        default_depth=settings.default_depth,
    )


# -- errors -----------------------------------------------------------------------------------
_LOC_ROOTS = {"body", "query", "path", "header", "cookie"}


def _field(loc: Sequence[Any], *, rooted: bool = True) -> str | None:
    """A validation error's location as a dotted field path, without FastAPI's ``body.`` root."""
    parts = [str(p) for p in loc]
    if rooted and parts and parts[0] in _LOC_ROOTS:
        parts = parts[1:]
    return ".".join(parts) or None


def _validation_details(errors: Sequence[Any], *, rooted: bool = True) -> list[dict[str, Any]]:
    details = []
    for e in errors:
        # A JSON syntax error's location is a character offset, not a field.
        field = "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ()), rooted=rooted)
        details.append({"field": field, "message": e.get("msg", ""), "type": e.get("type", "")})
    return details


def _envelope(status: int, code: str, message: str, field: str | None = None,
              details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate(
        {"error": {"status": status, "code": code, "message": message, "field": field,
                   "details": details or []}}
    )
    return JSONResponse(body.model_dump(), status_code=status)


def _error_response(request: Request, exc: Exception) -> JSONResponse:
    """The single mapping from an exception to an HTTP answer."""
    field: str | None = None
    details: list[dict[str, Any]] = []
    if isinstance(exc, TridentError):
        status, code, message, field = exc.status, exc.code, exc.message, exc.field
    elif isinstance(exc, (RequestValidationError, ValidationError)):
        details = _validation_details(exc.errors())
        first = details[0] if details else {"field": None, "message": "invalid request"}
        field = first["field"]
        status, code = 422, "validation_error"
        message = f"{first['message']} (field '{field}')" if field else str(first["message"])
    elif isinstance(exc, StarletteHTTPException):
        status, message = exc.status_code, str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        status, code, message = 500, "internal_error", "internal server error; see the server log"
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(_route(request.scope), code).inc()
    return _envelope(status, code, message, field, details)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", "unmatched")


# -- middleware -------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming.

    A streamed body that grows too large is cut off; the app's answer to the truncated body is
    dropped and the 413 is sent in its place.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0
        exceeded = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message: Message) -> None:
            if not exceeded:
                await send(message)

        await self.app(scope, limited, guarded)
        if exceeded:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = (
            f"request body exceeds {self.limit} bytes (TRIDENT_MAX_BODY_BYTES); "
            "send fewer or smaller requests"
        )
        await _envelope(413, PayloadTooLargeError.code, message, "body")(scope, receive, send)


class MetricsMiddleware:
    """Count every request and time it, labelled by route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route, method = _route(scope), scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)


# -- limits -----------------------------------------------------------------------------------
def check_limits(req: SearchRequest, settings: Settings, prefix: str = "") -> None:
    """Operator-configured limits; each violation is a 422 naming the field and the limit."""
    checks: list[tuple[str, int, int, str]] = [
        ("query", len(req.query), settings.max_query_chars, "TRIDENT_MAX_QUERY_CHARS characters"),
        ("k", req.k, settings.max_k, "TRIDENT_MAX_K"),
        ("offset", req.offset, settings.max_offset, "TRIDENT_MAX_OFFSET"),
    ]
    for name in RETRIEVERS:
        depth = req.options(name).depth
        if depth is not None:
            checks.append((f"{name}.depth", depth, settings.max_depth, "TRIDENT_MAX_DEPTH"))
    for field, value, limit, setting in checks:
        if value > limit:
            raise InvalidRequestError(
                f"{prefix}{field} is {value}, over the limit of {limit} ({setting})",
                field=f"{prefix}{field}",
            )


# -- the app ----------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None,
    *,
    loader: EngineLoader | None = None,
    load_in_background: bool = True,
) -> FastAPI:
    """Build the app. The engine loads when the app starts: in the background by default (so
    /healthz answers during a long load), or before the first request with ``load_in_background=False``."""
    settings = settings or Settings()
    loader = loader or load_engine
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = None
        app.state.load_error = None
        if load_in_background:
            task = asyncio.create_task(_load(app))
        else:
            await _load(app)
            task = None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            engine = app.state.engine
            app.state.engine = None
            if engine is not None:
                await run_in_threadpool(engine.close)

    async def _load(app: FastAPI) -> None:
        try:
            app.state.engine = await asyncio.to_thread(loader, settings)
            log.info("index %s loaded; ready", settings.index)
        except TridentError as exc:
            app.state.load_error = exc.message
            log.error("not ready: %s", exc.message)
        except Exception as exc:  # a damaged index must not kill the server; say why, stay up
            app.state.load_error = f"cannot load index {settings.index}: {exc}"
            log.exception("not ready: cannot load index %s", settings.index)

    app = FastAPI(
        title="Trident",
        summary="Hybrid retrieval: BM25 (Lucene) + learned sparse (SPLADE) + dense (FAISS), fused.",
        version=_version(),
        lifespan=lifespan,
        responses={
            422: {"model": ErrorResponse, "description": "Invalid request; `error.field` names the field."},
            503: {"model": ErrorResponse, "description": "No index loaded (yet)."},
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    app.state.load_error = None
    for exc_type in (TridentError, RequestValidationError, ValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, _error_response)  # type: ignore[arg-type]
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    api_key_header = APIKeyHeader(
        name=settings.api_key_header, auto_error=False,
        description="Required when the server runs with TRIDENT_API_KEY set.",
    )

    def require_api_key(key: str | None = Depends(api_key_header)) -> None:
        expected = settings.api_key
        if expected is None:
            return
        if not key:
            raise AuthenticationError(f"missing API key: send it in the {settings.api_key_header} header")
        if not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
            raise PermissionDeniedError("API key not accepted")

    def engine_of(request: Request) -> SearchEngine:
        engine = request.app.state.engine
        if engine is None:
            raise NotReadyError(_not_ready_message(request.app, settings))
        return engine

    auth_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": "API key missing."},
        403: {"model": ErrorResponse, "description": "API key wrong."},
        413: {"model": ErrorResponse, "description": "Body too large."},
    }
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=auth_responses)

    @v1.post("/search", response_model=SearchResponse, tags=["search"])
    async def search(body: SearchRequest, request: Request) -> Response:
        """Search with any retriever or a fusion of them; see the request schema for every option."""
        engine = engine_of(request)
        check_limits(body, settings)
        resp = await run_in_threadpool(engine.search, body)
        metrics.observe_search(resp)
        return _json(resp)

    @v1.get("/search", response_model=SearchResponse, tags=["search"])
    async def search_get(
        request: Request,
        q: str = Query(..., description="Free-text query."),
        mode: str = Query("hybrid", description="bm25 | sparse | dense | hybrid"),
        k: int = 10,
        offset: int = 0,
        retrievers: str | None = Query(None, description="Hybrid: comma-separated subset, e.g. `bm25,dense`."),
        fusion: str | None = Query(None, description="rrf | interpolation"),
        rrf_k: float | None = None,
        normalization: str | None = Query(None, description="minmax | zscore | none"),
        bm25_depth: int | None = None,
        bm25_weight: float | None = None,
        sparse_depth: int | None = None,
        sparse_weight: float | None = None,
        dense_depth: int | None = None,
        dense_weight: float | None = None,
        filters: str | None = Query(None, description='Metadata filters as a JSON object, e.g. `{"year": 2020}`.'),
        explain: bool = False,
        include_text: bool = True,
    ) -> Response:
        """The same search as POST, from query parameters (convenient for curl and browsers)."""
        parsed_filters: Any = {}
        if filters:
            try:
                parsed_filters = json.loads(filters)
            except json.JSONDecodeError as exc:
                raise InvalidRequestError(f"filters is not valid JSON: {exc.msg}", field="filters") from None
        per = {"bm25": (bm25_depth, bm25_weight), "sparse": (sparse_depth, sparse_weight),
               "dense": (dense_depth, dense_weight)}
        raw: dict[str, Any] = {
            "query": q, "mode": mode, "k": k, "offset": offset, "filters": parsed_filters,
            "explain": explain, "include_text": include_text,
            "fusion": {n: v for n, v in (("method", fusion), ("rrf_k", rrf_k),
                                         ("normalization", normalization)) if v is not None},
            **{name: {"depth": d, "weight": w} for name, (d, w) in per.items() if (d, w) != (None, None)},
        }
        if retrievers:
            raw["retrievers"] = [r.strip() for r in retrievers.split(",") if r.strip()]
        try:
            body = SearchRequest.model_validate(raw)
        except ValidationError as exc:
            details = _validation_details(exc.errors(), rooted=False)
            for d in details:
                d["field"] = _get_param(d["field"])
            first = details[0]
            raise InvalidRequestError(
                f"{first['message']} (parameter '{first['field']}')", field=first["field"]
            ) from None
        return await search(body, request)

    @v1.post("/search/batch", response_model=BatchSearchResponse, tags=["search"])
    async def search_batch(body: BatchSearchRequest, request: Request) -> Response:
        """Several searches in one call; each result equals what `POST /v1/search` returns for it."""
        engine = engine_of(request)
        if len(body.requests) > settings.max_batch:
            raise InvalidRequestError(
                f"requests holds {len(body.requests)} searches, over the limit of {settings.max_batch} "
                "(TRIDENT_MAX_BATCH)", field="requests")
        for i, req in enumerate(body.requests):
            check_limits(req, settings, prefix=f"requests.{i}.")
        start = time.perf_counter()
        results = await run_in_threadpool(engine.search_batch, body.requests)
        for resp in results:
            metrics.observe_search(resp)
        total_ms = (time.perf_counter() - start) * 1e3
        return _json(BatchSearchResponse(results=results, timings_ms={"total": total_ms}))

    @v1.get("/documents/{doc_id:path}", response_model=DocumentResponse, tags=["documents"],
            responses={404: {"model": ErrorResponse, "description": "No such document."}})
    async def get_document(doc_id: str, request: Request) -> DocumentResponse:
        """One stored document by its corpus `_id`."""
        engine = engine_of(request)
        return await run_in_threadpool(engine.document, doc_id)

    @v1.get("/index", response_model=IndexInfo, tags=["index"])
    async def index_info(request: Request) -> IndexInfo:
        """The loaded index: manifest, document count, retrievers, default fusion, query encoders."""
        return engine_of(request).info()

    app.include_router(v1)
    _document_limits(app, settings)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (whether or not an index is loaded)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, str]:
        """Readiness: 200 only once the index is loaded and searchable."""
        engine_of(request)
        return {"status": "ready", "index": str(settings.index)}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests, latency per route, per search stage and mode, errors."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Write the configured limits into the OpenAPI schema, so clients and docs see them."""
    generate = app.openapi

    def set_bound(schema: dict[str, Any], **bounds: int) -> None:
        for member in [schema, *schema.get("anyOf", [])]:
            if member.get("type") in ("integer", "string", "array"):
                member.update(bounds)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        comps = schema.get("components", {}).get("schemas", {})
        search = comps.get("SearchRequest", {}).get("properties", {})
        if search:
            set_bound(search["query"], maxLength=settings.max_query_chars)
            set_bound(search["k"], maximum=settings.max_k)
            set_bound(search["offset"], maximum=settings.max_offset)
        options = comps.get("RetrieverOptions", {}).get("properties", {})
        if options:
            set_bound(options["depth"], maximum=settings.max_depth)
        batch = comps.get("BatchSearchRequest", {}).get("properties", {})
        if batch:
            set_bound(batch["requests"], maxItems=settings.max_batch)
        get_limits = {"q": {"maxLength": settings.max_query_chars}, "k": {"maximum": settings.max_k},
                      "offset": {"maximum": settings.max_offset},
                      **{f"{r}_depth": {"maximum": settings.max_depth} for r in RETRIEVERS}}
        for param in schema["paths"].get("/v1/search", {}).get("get", {}).get("parameters", []):
            if param["name"] in get_limits:
                set_bound(param["schema"], **get_limits[param["name"]])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _json(model: SearchResponse | BatchSearchResponse) -> Response:
    """Serialise an engine-built response directly: it is a validated model already, and FastAPI
    would validate it again against ``response_model`` (which stays declared for the docs)."""
    return Response(model.model_dump_json(), media_type="application/json")


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
    if head in RETRIEVERS and tail:
        return f"{head}_{tail}"
    return head if head in {"filters", "retrievers"} else field


def _not_ready_message(app: FastAPI, settings: Settings) -> str:
    error = app.state.load_error
    if error is None:
        return f"index {settings.index} is still loading; retry shortly"
    return (
        f"{error}. Build an index with `trident index build --corpus <BEIR folder> --out {settings.index}` "
        "and restart the server (or point TRIDENT_INDEX / --index at an existing one)."
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trident-search")
    except PackageNotFoundError:
        return "0.0.0"
