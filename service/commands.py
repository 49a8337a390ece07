"""``trident serve`` and ``trident search``: registered on the ``trident`` command by ``trident_search.service.cli``.

Heavy imports (uvicorn, Lucene, FAISS, encoders) happen inside the functions, so ``trident --help``
stays fast.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

import typer

from trident_search.settings import SearchSettings, ServerSettings

log = logging.getLogger(__name__)


def _default(section: type[Any], name: str) -> Any:
    """A CLI default, taken from the settings model so the two cannot disagree."""
    return section.model_fields[name].default


DEFAULT_INDEX: Path = _default(ServerSettings, "index")


def serve(
    index: Path = typer.Option(DEFAULT_INDEX, "--index", envvar="TRIDENT_INDEX",
                               help="Index directory built by `trident index build`."),
    host: str = typer.Option(_default(ServerSettings, "host"), envvar="TRIDENT_HOST",
                             help="Interface to bind (0.0.0.0 for every interface)."),
    port: int = typer.Option(_default(ServerSettings, "port"), envvar="TRIDENT_PORT", min=1, max=65535),
    workers: int = typer.Option(_default(ServerSettings, "workers"), envvar="TRIDENT_WORKERS", min=1,
                                help="Worker processes; each loads its own copy of the index."),
    api_key: str | None = typer.Option(None, envvar="TRIDENT_API_KEY",
                                       help="Require this key in the X-API-Key header on /v1/*."),
    query_backend: str = typer.Option(_default(SearchSettings, "query_backend"), envvar="TRIDENT_QUERY_BACKEND",
                                      help="Query encoder backend: onnx (int8, fast) or torch."),
    ray_address: str | None = typer.Option(
        None, envvar="TRIDENT_RAY_ADDRESS",
        help="Serve a sharded index from Ray actors: local, auto or host:port (needs the ray extra)."),
) -> None:
    """Serve an index over HTTP (docs at /docs). Starts even without an index; /readyz says why."""
    import uvicorn

    _check_port(host, port)
    if ray_address is not None:  # this process becomes the router of a sharded index (cluster/)
        from trident_search.errors import TridentError
        from trident_search.service.app import sharded_loader

        if ray_address == "local" and workers > 1:
            raise typer.BadParameter("--ray-address local starts a private Ray per process; with --workers > 1 "
                                     "start a cluster first (`ray start --head`) and pass --ray-address auto")
        try:
            sharded_loader()
        except TridentError as exc:
            raise typer.BadParameter(exc.message, param_hint="--ray-address") from None
        os.environ["TRIDENT_RAY_ADDRESS"] = ray_address

    # Settings travel by environment so every worker process reads the same ones.
    os.environ["TRIDENT_INDEX"] = str(index)
    os.environ["TRIDENT_QUERY_BACKEND"] = query_backend
    if api_key:
        os.environ["TRIDENT_API_KEY"] = api_key
    from trident_search.settings import Settings

    try:
        Settings()
    except Exception as exc:  # pydantic ValidationError: a bad TRIDENT_* variable
        raise typer.BadParameter(str(exc)) from None
    if not (index / "manifest.json").is_file():
        log.error("no index at %s: the server starts, but /readyz and searches answer 503 until one is "
                  "built (`trident index build --corpus <BEIR folder> --out %s`)", index, index)
    server = ServerSettings()
    level = server.log_level
    _run_until_signal(lambda: uvicorn.run(
        "trident_search.service.app:create_app", factory=True, host=host, port=port, workers=workers,
        log_level=level, log_config=_log_config(level), timeout_graceful_shutdown=math.ceil(server.drain_s)))


def _check_port(host: str, port: int) -> None:
    """Fail in a second, not after loading the index, when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            typer.secho(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}; stop what uses "
                        "the port or pick another with --port / TRIDENT_PORT", fg="red", err=True)
            raise typer.Exit(1) from None


def _run_until_signal(run: Any) -> None:
    """Run the server; a SIGTERM/SIGINT that stopped it gracefully ends the process with status 0.

    uvicorn re-raises the signal it caught once it has drained, against the handler found before it
    started, so that handler is ours and only notes the signal. Then, if threads are still alive
    (a search parked in the JVM past the drain deadline, the JVM's own), the process exits at once
    instead of waiting for them in interpreter shutdown.
    """
    import signal
    import threading

    caught: list[int] = []
    saved = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
             for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if caught:
        log.info("shutdown complete after %s; exit 0", signal.Signals(caught[0]).name)
    from trident_search.indexers import jvm

    alive = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if alive or getattr(jvm, "_started", False):
        for handler in logging.getLogger().handlers + logging.getLogger("trident_search").handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging setup plus our packages' loggers, so worker processes (which do not
    inherit this process's logging) also report index loading and errors."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("trident_search",):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _parse_filters(items: list[str]) -> dict[str, Any]:
    """``field=value`` pairs; a value is read as JSON when it parses (2020, true), else a string;
    a field given twice means "one of"."""
    filters: dict[str, Any] = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise typer.BadParameter(f"filter {item!r} must look like field=value", param_hint="--filter")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if field in filters:
            prev = filters[field]
            filters[field] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            filters[field] = value
    return filters


def search(
    query: str = typer.Argument(..., help="Query text."),
    index: Path = typer.Option(DEFAULT_INDEX, "--index", envvar="TRIDENT_INDEX"),
    mode: str = typer.Option("hybrid", help="bm25 | sparse | dense | hybrid"),
    k: int = typer.Option(10, "-k", "--k", min=1),
    offset: int = typer.Option(0, min=0),
    fusion: str | None = typer.Option(None, help="rrf | interpolation (default: the index's)."),
    filter_: list[str] = typer.Option([], "--filter", help="Metadata filter field=value; repeat it."),
    explain: bool = typer.Option(False, help="Show each retriever's rank and score."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON response instead of a table."),
    query_backend: str = typer.Option(_default(SearchSettings, "query_backend"), envvar="TRIDENT_QUERY_BACKEND",
                                      help="Query encoder backend: onnx or torch."),
) -> None:
    """Search an index once, in-process, and print a table (no server needed)."""
    from pydantic import ValidationError
    from rich.console import Console
    from rich.table import Table

    from trident_search.core.searcher import Searcher
    from trident_search.errors import TridentError

    body: dict[str, Any] = {"query": query, "mode": mode, "k": k, "offset": offset, "explain": explain,
                            "filters": _parse_filters(filter_), "include_text": False}
    if fusion:
        body["fusion"] = {"method": fusion}
    searcher = None
    try:
        searcher = Searcher.open(index, query_backend=query_backend)
        response = searcher.search_full(**body)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise typer.BadParameter(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    except TridentError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(1) from None
    finally:
        if searcher is not None:
            searcher.close()
    if as_json:
        typer.echo(response.model_dump_json(indent=2))
        return
    table = Table(title=f"{query!r} ({response.mode}, {response.total} candidates)")
    for col in ("rank", "id", "score", "title"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    if explain:
        for r in response.retrievers:
            table.add_column(f"{r} rank", justify="right")
    for hit in response.hits:
        row = [str(hit.rank), hit.id, f"{hit.score:.4f}", hit.title[:70]]
        if explain and hit.explain:
            row += [str(hit.explain[r].rank or "-") for r in response.retrievers]
        table.add_row(*row)
    console = Console()
    console.print(table)
    timings = ", ".join(f"{s} {ms:.1f}" for s, ms in response.timings_ms.items())
    console.print(f"timings (ms): {timings}")
