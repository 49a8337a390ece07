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
    from cluster.layout import ShardedManifest
    from indexers.manifest import ManifestError

    try:
        manifest = ShardedManifest.load(index)
    except ManifestError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
