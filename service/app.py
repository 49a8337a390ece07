"""The FastAPI app: ``create_app(settings)`` builds it, its lifespan loads the engine into app.state.

The index loads on a worker thread after startup, so ``/healthz`` answers at once and ``/readyz``
says 503 until the engine is ready. A missing or broken index is logged as one clear line and
turns every search into a 503 that says how to build one; the process keeps running.

Around the requests (``trident_search.service.lifecycle``): the engine is served as numbered
generations, hot-swapped when a new index is published at the served path (polled every
``watch_s``) or on ``POST /v1/admin/reload``; searches pass a bounded admission queue (429 with
``Retry-After`` past it); on SIGTERM/SIGINT ``/readyz`` answers 503 while uvicorn drains requests in
flight for up to ``drain_s``, then the index closes within what is left of the deadline.

Every error, whatever raised it, leaves as the same envelope (``schemas.ErrorResponse``) and is
mapped to its status in one place, ``_error_response``. Search is CPU-bound and runs on the thread
pool, never on the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trident_search.errors import IndexLoadError, NotReadyError, OverloadedError, TridentError
from trident_search.service.builds import builds_router
from trident_search.service.errors import (
    AuthenticationError,
    ErrorResponse,
    PayloadTooLargeError,
    PermissionDeniedError,
    status_of,
)
from trident_search.service.lifecycle import (
    Admission,
    Generation,
    Generations,
    close_within,
    index_key,
    on_daemon_thread,
    watch_signals,
)
from trident_search.service.metrics import Metrics
from trident_search.service.routes import (
    SearchEngine,
    admin_router,
    documents_router,
    index_router,
    ops_router,
    page_router,
    search_router,
)
from trident_search.service.writes import writes_router
from trident_search.settings import Settings

log = logging.getLogger(__name__)


EngineLoader = Callable[[Settings], SearchEngine]


def load_engine(settings: Settings) -> SearchEngine:
    """The production loader: the engine over ``settings.server.index``; with a Ray address, the
    sharded loader that the cluster package registers as the ``trident.serving`` entry point ``ray``."""
    from trident_search.core.engine import Engine  # heavy imports (Lucene, FAISS, ONNX) only when serving

    if settings.cluster.ray_address:
        return sharded_loader()(settings)  # type: ignore[no-any-return]

    return Engine.load(
        settings.server.index,
        query_backend=settings.search.query_backend,
        threads=settings.search.search_threads,
        default_depth=settings.search.default_depth,
    )


def sharded_loader() -> Callable[[Settings], SearchEngine]:
    """``trident_search.cluster.serving.load_sharded``, found by entry point (cluster sits beside service)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="trident.serving") if ep.name == "ray"]
    if not found:
        raise IndexLoadError("serving with a Ray address needs the ray extra: pip install 'trident-search[ray]'")
    return found[0].load()  # type: ignore[no-any-return]


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
    headers: dict[str, str] = {}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(getattr(exc, "retry_after", 1))
    if isinstance(exc, TridentError):
        (status, code), message, field = status_of(exc), exc.message, exc.field
    elif isinstance(exc, (RequestValidationError, ValidationError)):
        details = _validation_details(exc.errors())
        first = details[0] if details else {"field": None, "message": "invalid request"}
        field = first["field"]
        status, code = 422, "validation_error"
        message = f"{first['message']} (field '{field}')" if field else str(first["message"])
    elif isinstance(exc, StarletteHTTPException):
        status, message = exc.status_code, str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        headers.update(exc.headers or {})
        if status == 405:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    else:
        # exc_info=exc: the handler may run outside the except block (a bare log.exception then
        # logs "NoneType: None" instead of the traceback).
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status, code, message = 500, "internal_error", "internal server error; see the server log"
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(_route(request.scope), code).inc()
    response = _envelope(status, code, message, field, details)
    response.headers.update(headers)
    return response


def _allowed_methods(request: Request) -> str:
    """Every method some route answers at this path (Starlette names only the first route's)."""
    from starlette.routing import Match

    routes = request.app.router.routes
    return ", ".join(
        method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    )


def _route(scope: Scope) -> str:
    """The matched route's full path template (FastAPI >= 0.16x keeps included routers nested, and
    ``scope["route"]`` is then the inner route without the ``/v1`` prefix)."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(context, "path", None)
    if isinstance(path, str):
        return path
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
        await _envelope(413, status_of(PayloadTooLargeError())[1], message, "body")(scope, receive, send)


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


# -- the app ----------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None,
    *,
    loader: EngineLoader | None = None,
    load_in_background: bool = True,
    watch: bool = True,
) -> FastAPI:
    """Build the app. The engine loads when the app starts: in the background by default (so
    /healthz answers during a long load), or before the first request with ``load_in_background=False``.
    With ``watch`` (and ``watch_s`` > 0) a new index published at the served path is hot-swapped in."""
    settings = settings or Settings()
    loader = loader or load_engine
    metrics = Metrics()
    server = settings.server
    generations = Generations()
    reload_lock = asyncio.Lock()

    def loaded(app: FastAPI, gen: Generation | None) -> None:
        app.state.engine = gen.engine if gen else None

    async def reload(app: FastAPI, reason: str, *, initial: bool = False) -> Generation:
        """Open and warm the index at the served path on a daemon thread, then swap it in. On
        failure the serving generation (if any) stays and the error is raised (and logged)."""
        async with reload_lock:
            key = index_key(server.index)
            current = generations.current
            if not initial and current is not None and key == current.key:
                # Nothing new is published there (and a server taking writes holds this very index).
                log.info("reload (%s): %s is unchanged; generation %d keeps serving", reason, server.index,
                         current.number)
                return current
            if not initial:
                log.info("reloading index %s (%s); generation %d keeps serving meanwhile",
                         server.index, reason, generations.number)
            start = time.perf_counter()
            try:
                engine = await on_daemon_thread(loader, settings, name="trident-index-load")
            except Exception as exc:
                app.state.failed_key = key
                message = exc.message if isinstance(exc, TridentError) else f"cannot load index {server.index}: {exc}"
                if generations.current is None:
                    app.state.load_error = message
                    if isinstance(exc, TridentError):
                        log.error("not ready: %s", message)
                    else:  # a damaged index must not kill the server; say why, stay up
                        log.exception("not ready: cannot load index %s", server.index)
                else:
                    log.error("reload failed, generation %d keeps serving: %s", generations.number, message)
                raise
            if app.state.draining:  # shutting down meanwhile: do not start serving a new generation
                await on_daemon_thread(engine.close)
                raise NotReadyError("the server is shutting down")
            gen = generations.install(engine, key)
            loaded(app, gen)
            app.state.load_error = None
            app.state.failed_key = None
            reassert_signals()  # the JVM, if this load started it, took SIGTERM/SIGINT over
            log.info("index %s loaded as generation %d in %.1f s; ready", server.index, gen.number,
                     time.perf_counter() - start)
            return gen

    async def watch_index(app: FastAPI) -> None:
        """Poll the served path; reload when what is published there changes."""
        while not app.state.draining:
            await asyncio.sleep(server.watch_s)
            key = index_key(server.index)
            current = generations.current
            if key is None or reload_lock.locked() or key == app.state.failed_key:
                continue
            if current is not None and key == current.key:
                continue
            if current is None and app.state.load_error is None:
                continue  # the first load is still running
            try:
                await reload(app, "a new index was published at the served path")
            except Exception:  # noqa: BLE001 - logged by reload(); keep watching
                pass

    def on_signal(signum: int) -> None:
        if not app.state.draining:
            app.state.draining = True
            log.info("%s received: draining; /readyz answers 503, requests in flight have %.0f s to finish",
                     signal.Signals(signum).name, server.drain_s)

    reassert_signals: Callable[[], None] = lambda: None  # noqa: E731

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal reassert_signals
        app.state.engine = None
        app.state.load_error = None
        app.state.failed_key = None
        app.state.draining = False
        reassert_signals = watch_signals(on_signal)
        tasks: list[asyncio.Task[Any]] = []

        async def first_load() -> None:
            try:
                await reload(app, "start", initial=True)
            except Exception:  # noqa: BLE001 - logged; /readyz and searches say why
                pass

        if load_in_background:
            tasks.append(asyncio.create_task(first_load()))
        else:
            await first_load()
        if watch and server.watch_s > 0:
            tasks.append(asyncio.create_task(watch_index(app)))
        try:
            yield
        finally:
            app.state.draining = True
            for task in tasks:
                task.cancel()
            await _close(generations)
            loaded(app, None)

    async def _close(gens: Generations) -> None:
        gen = gens.take()
        if gen is None:
            return
        if gen.inflight:
            log.warning("drain deadline passed with %d request(s) still running on generation %d; "
                        "exiting without closing it", gen.inflight, gen.number)
            return
        log.info("closing index generation %d", gen.number)
        gen.closed = True
        if close_within(gen, max(1.0, min(5.0, server.drain_s))):
            log.info("index generation %d closed", gen.number)
        else:
            log.warning("closing index generation %d did not finish in time; exiting anyway", gen.number)

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
    app.state.generations = generations
    app.state.engine = None
    app.state.load_error = None
    app.state.failed_key = None
    app.state.draining = False
    admission = Admission(server.max_inflight, server.max_queue)
    app.state.admission = admission
    for exc_type in (TridentError, RequestValidationError, ValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, _error_response)  # type: ignore[arg-type]
    app.add_middleware(BodyLimitMiddleware, limit=settings.server.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    api_key_header = APIKeyHeader(
        name=settings.server.api_key_header, auto_error=False,
        description="Required when the server runs with TRIDENT_API_KEY set.",
    )

    def require_api_key(key: str | None = Depends(api_key_header)) -> None:
        expected = settings.server.api_key
        if expected is None:
            return
        if not key:
            raise AuthenticationError(f"missing API key: send it in the {settings.server.api_key_header} header")
        if not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
            raise PermissionDeniedError("API key not accepted")

    def lease(request: Request) -> AbstractAsyncContextManager[Generation]:
        """The serving generation for one request (it stays open until the request ends)."""
        return generations.lease(lambda: NotReadyError(_not_ready_message(request.app, settings)))

    def ready(request: Request) -> Generation:
        if request.app.state.draining:
            raise NotReadyError("the server is shutting down (draining requests in flight)")
        gen = generations.current
        if gen is None:
            raise NotReadyError(_not_ready_message(request.app, settings))
        return gen

    async def do_reload(request: Request) -> Generation:
        if request.app.state.draining:
            raise NotReadyError("the server is shutting down")
        try:
            return await reload(request.app, "POST /v1/admin/reload")
        except TridentError as exc:
            raise IndexLoadError(f"reload failed; generation {generations.number} keeps serving: "
                                 f"{exc.message}") from None
        except Exception as exc:
            raise IndexLoadError(f"reload failed; generation {generations.number} keeps serving: "
                                 f"cannot load index {server.index}: {exc}") from None

    auth_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": "API key missing."},
        403: {"model": ErrorResponse, "description": "API key wrong."},
        413: {"model": ErrorResponse, "description": "Body too large."},
    }
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=auth_responses)
    v1.include_router(search_router(settings, lease, admission.slot, metrics, _validation_details))
    v1.include_router(documents_router(lease))
    v1.include_router(writes_router(lease))  # live writes (service/writes.py)
    v1.include_router(index_router(lease))
    v1.include_router(admin_router(do_reload))
    v1.include_router(builds_router(settings, do_reload))  # POST /v1/admin/builds (service/builds.py)
    app.include_router(v1)
    app.include_router(ops_router(settings, ready, metrics))
    app.include_router(page_router(settings))  # the search page at / (service/static/)
    _document_limits(app, settings)
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
            set_bound(search["query"], maxLength=settings.search.max_query_chars)
            set_bound(search["k"], maximum=settings.search.max_k)
            set_bound(search["offset"], maximum=settings.search.max_offset)
        for name, comp in comps.items():  # every retriever's options model
            if name.endswith("Options") and "depth" in comp.get("properties", {}):
                set_bound(comp["properties"]["depth"], maximum=settings.search.max_depth)
        batch = comps.get("BatchSearchRequest", {}).get("properties", {})
        if batch:
            set_bound(batch["requests"], maxItems=settings.server.max_batch)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _not_ready_message(app: FastAPI, settings: Settings) -> str:
    error = app.state.load_error
    if error is None:
        return f"index {settings.server.index} is still loading; retry shortly"
    return (
        f"{error}. Build an index with `trident index build --corpus <BEIR folder> --out {settings.server.index}` "
        "and restart the server (or point TRIDENT_INDEX / --index at an existing one)."
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trident-search")
    except PackageNotFoundError:
        return "0.0.0"
