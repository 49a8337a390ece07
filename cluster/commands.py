"""``trident cluster``: build, serve and inspect sharded indexes on Ray. Registered through the
``trident.commands`` entry point, so the lower layers (indexers, service) never import this package.

``trident cluster build --shards N --ray-address ADDR`` takes every option of ``trident index build``
(the same objects, from :mod:`trident_search.indexers.cli`) plus the Ray ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from trident_search.indexers import cli as index_cli

cluster_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sharded indexes on Ray: build and inspect (serve with `trident serve --ray-address`).",
)


@cluster_app.command("build")
def build(
    corpus: Path = index_cli.CORPUS,
    out: Path = index_cli.OUT,
    shards: int = typer.Option(..., min=1, help="Number of shards (complete index directories)."),
    ray_address: str = typer.Option(
        "local", "--ray-address", help="local (private Ray here), auto (running cluster) or host:port."
    ),
    encode_workers: int = typer.Option(2, min=1, help="Encoder actors (one model load each)."),
    worker_gpus: float = typer.Option(0.0, min=0.0, help="GPUs per encoder actor (0: CPU)."),
    retrievers: str | None = index_cli.RETRIEVERS,
    sparse_model: str | None = index_cli.SPARSE_MODEL,
    dense_model: str | None = index_cli.DENSE_MODEL,
    device: str = index_cli.DEVICE,
    batch_size: int = index_cli.BATCH_SIZE,
    max_length: int = index_cli.MAX_LENGTH,
    shard_size: int = index_cli.SHARD_SIZE,
    threads: int | None = index_cli.THREADS,
    bm25_fields: str | None = index_cli.BM25_FIELDS,
    bm25_threads: int | None = index_cli.BM25_THREADS,
    sparse_doc_top_k: int | None = index_cli.SPARSE_DOC_TOP_K,
    sparse_param: list[str] = index_cli.SPARSE_PARAM,
    dense_factory: str | None = index_cli.DENSE_FACTORY,
    dense_ef_construction: int | None = index_cli.DENSE_EF_CONSTRUCTION,
    param: list[str] = index_cli.PARAM,
    skip_invalid: bool = index_cli.SKIP_INVALID,
    debug: bool = index_cli.DEBUG,
) -> None:
    """Build a sharded index on Ray: N single-node index directories under one published root.

    Ray retries failed shard tasks, which resume from their own checkpoints (no --resume here).
    """
    from trident_search.cluster.build import build_sharded
    from trident_search.cluster.runtime import RayUnavailableError
    from trident_search.indexers.publish import BuildError

    def go() -> object:
        config = index_cli.build_config(
            retrievers=retrievers, device=device, batch_size=batch_size, max_length=max_length,
            shard_size=shard_size, threads=threads, sparse_model=sparse_model, dense_model=dense_model,
            bm25_fields=bm25_fields, bm25_threads=bm25_threads, sparse_doc_top_k=sparse_doc_top_k,
            sparse_param=sparse_param, dense_factory=dense_factory,
            dense_ef_construction=dense_ef_construction, param=param,
        )
        try:
            return build_sharded(corpus, out, config, shards=shards, address=ray_address,
                                 encode_workers=encode_workers, worker_gpus=worker_gpus,
                                 skip_invalid=skip_invalid)
        except RayUnavailableError as exc:
            raise BuildError(str(exc)) from None

    manifest = index_cli.run_build(go, out=out, debug=debug)  # type: ignore[arg-type]
    index_cli.print_summary(out, manifest)
    typer.echo(f"  {manifest.n_shards} shards: " + ", ".join(  # type: ignore[attr-defined]
        f"{s['name']} {s['doc_count']}" for s in manifest.shards))  # type: ignore[attr-defined]


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
