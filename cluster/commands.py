"""``trident cluster``: inspect sharded indexes. Registered through the ``trident.commands`` entry point.

Building and serving go through the usual commands, which hand over to this package when given
``--ray-address``: ``trident index build --shards N --ray-address ADDR`` and
``trident serve --index <sharded dir> --ray-address ADDR``.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

cluster_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sharded indexes on Ray (build: `trident index build --shards N --ray-address ...`).",
)


@cluster_app.command("info")
def info(index: Path = typer.Argument(..., help="Sharded index directory.")) -> None:
    """Print a sharded index's top-level manifest: shards, document counts, assignment rule."""
    from trident_search.cluster.layout import ShardedManifest
    from trident_search.indexers.manifest import ManifestError

    try:
        manifest = ShardedManifest.load(index)
    except ManifestError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))


@cluster_app.command("serve")
def serve(
    index: Path = typer.Option(..., "--index", help="Sharded index directory."),
    ray_address: str = typer.Option("auto", "--ray-address", help="local, auto, or host:port of the Ray cluster."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, min=1, max=65535),
    replicas: int = typer.Option(1, min=1, help="Actors per shard (spread over nodes) for availability."),
    deadline: float = typer.Option(2.0, min=0.01, help="Seconds to wait for shards before answering partially."),
    workers: int = typer.Option(1, min=1, help="HTTP worker processes (each is a Ray driver with its own actors)."),
    query_backend: str = typer.Option("onnx", help="Query encoder backend in the shard actors: onnx or torch."),
) -> None:
    """Serve a sharded index: this process is the HTTP router and Ray driver, shards are actors."""
    from trident_search.cluster.serving import serve_sharded
    from trident_search.service.errors import TridentError

    try:
        serve_sharded(index, address=ray_address, host=host, port=port, replicas=replicas,
                      deadline_s=deadline, workers=workers, query_backend=query_backend)
    except TridentError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
