"""``trident index``: build an index directory, and inspect or verify one.

Heavy imports (torch, FAISS, Lucene) happen inside the commands so ``trident --help`` stays fast.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)

index_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


@index_app.command("build")
def build(
    corpus: Path = typer.Option(..., "--corpus", help="BEIR folder, corpus.jsonl or corpus.jsonl.gz."),
    out: Path = typer.Option(..., "--out", help="Index directory to create or replace (atomically)."),
    retrievers: str = typer.Option("bm25,sparse,dense", help="Comma-separated: bm25, sparse, dense."),
    sparse_model: Optional[str] = typer.Option(None, help="HF name or folder [default: SPLADE-tiny, offline]."),
    dense_model: Optional[str] = typer.Option(None, help="HF name or folder [default: all-MiniLM-L6-v2, offline]."),
    device: str = typer.Option("auto", help="Encoder device: auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(32, help="Encoder batch size."),
    max_length: int = typer.Option(256, help="Encoder token limit per document."),
    shard_size: int = typer.Option(4096, help="Documents per encoding checkpoint shard."),
    threads: Optional[int] = typer.Option(None, help="Encoder CPU threads [default: torch's]."),
    bm25_fields: str = typer.Option("flat", help="flat (title+text in one field) or multifield."),
    bm25_threads: int = typer.Option(2, help="Lucene indexing threads."),
    sparse_doc_top_k: Optional[int] = typer.Option(None, help="Keep only the k heaviest terms per document."),
    sparse_param: list[str] = typer.Option(
        [], help="Sparse index parameter KEY=VALUE (SparseParams field; repeatable), e.g. n_postings=4000."
    ),
    dense_factory: Optional[str] = typer.Option(
        None, help="FAISS factory string: Flat, HNSW32, IVF1024,PQ32 [default: Flat up to 200k docs, else HNSW32]."
    ),
    dense_ef_construction: Optional[int] = typer.Option(None, help="HNSW efConstruction."),
    resume: bool = typer.Option(False, help="Continue an interrupted build of --out from its checkpoints."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid corpus records (and count them) instead of failing."),
    shards: int = typer.Option(1, min=1, help="Split the index into N shards built on Ray (needs --ray-address)."),
    ray_address: Optional[str] = typer.Option(
        None, help="Build on Ray: local (private Ray here), auto (running cluster) or host:port. Needs the ray extra."
    ),
) -> None:
    """Build docstore, BM25, learned-sparse and dense indexes for a corpus into one directory."""
    from trident_search.indexers.build import BuildConfig, BuildError, build_index
    from trident_search.indexers.corpus import CorpusError

    try:
        config = BuildConfig(
            retrievers=tuple(r.strip() for r in retrievers.split(",") if r.strip()),
            device=device,
            batch_size=batch_size,
            max_length=max_length,
            shard_size=shard_size,
            encoder_threads=threads,
            bm25_fields=bm25_fields,
            bm25_threads=bm25_threads,
            sparse_model=sparse_model,
            sparse_doc_top_k=sparse_doc_top_k,
            sparse_params=_key_values(sparse_param),
            dense_model=dense_model,
            dense_factory=dense_factory,
            dense_ef_construction=dense_ef_construction,
        )
        if ray_address is None and shards > 1:
            _fail("--shards needs --ray-address (local: a private Ray on this machine)")
        if ray_address is not None:
            from trident_search.cluster.build import build_sharded_cli  # optional package: imported only when asked for

            manifest = build_sharded_cli(corpus, out, config, shards, ray_address, resume, skip_invalid)
        else:
            manifest = build_index(corpus, out, config, resume=resume, skip_invalid=skip_invalid)
    except CorpusError as exc:
        _fail(f"{exc}\n(fix the record, or pass --skip-invalid to skip invalid records)")
    except (BuildError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    else:
        skipped = manifest.corpus.get("skipped", 0)
        typer.echo(
            f"built {out}: {manifest.doc_count} documents"
            + (f", {skipped} invalid records skipped" if skipped else "")
            + f", retrievers {', '.join(manifest.retrievers)}"
        )
        for stage, s in manifest.stages.items():
            typer.echo(f"  {stage:<14} {s['docs']:>8} docs {s['seconds']:>9.1f} s {s['docs_per_s']:>9.1f} docs/s")


@index_app.command("info")
def info(
    index: Path = typer.Argument(..., help="Index directory."),
    verify: bool = typer.Option(False, help="Re-hash every file against the manifest."),
) -> None:
    """Print an index's manifest; with --verify, check every file's checksum."""
    from trident_search.indexers.manifest import Manifest, ManifestError

    try:
        manifest = Manifest.load(index)
    except ManifestError as exc:
        _fail(str(exc))
    summary = manifest.to_dict()
    summary["files"] = f"{len(manifest.files)} files, {sum(f['size'] for f in manifest.files.values())} bytes"
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))
    if verify:
        problems = manifest.verify(index)
        for problem in problems:
            typer.secho(problem, err=True, fg=typer.colors.RED)
        if problems:
            raise typer.Exit(code=1)
        typer.echo("all files match the manifest")


def _key_values(items: list[str]) -> dict[str, object]:
    """Parse KEY=VALUE pairs; values are JSON when they parse (numbers, booleans), else strings."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--sparse-param")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
