"""``trident index``: build an index directory, and inspect or verify one.

Heavy imports (torch, FAISS, Lucene) happen inside the commands so ``trident --help`` stays fast.
"""
from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from trident_search.indexers.build import BuildConfig
    from trident_search.indexers.manifest import Manifest

log = logging.getLogger(__name__)

index_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


# -- build options, shared with ``trident cluster build`` (which adds --shards and --ray-address) ----
# Retriever-specific flags default to None so that only what the user gives lands in the
# per-retriever params (the build identity that --resume compares).
CORPUS = typer.Option(..., "--corpus", help="BEIR folder, corpus.jsonl or corpus.jsonl.gz.")
OUT = typer.Option(..., "--out", help="Index directory to create or replace (atomically).")
RETRIEVERS = typer.Option(
    None, "--retrievers", help="Comma-separated registered retrievers (default: bm25,sparse,dense)."
)
SPARSE_MODEL = typer.Option(None, help="HF name or folder (default: SPLADE-tiny, offline).")
DENSE_MODEL = typer.Option(None, help="HF name or folder (default: all-MiniLM-L6-v2, offline).")
DEVICE = typer.Option("auto", help="Encoder device: auto, cpu, cuda or cuda:N.")
BATCH_SIZE = typer.Option(32, help="Encoder batch size.")
MAX_LENGTH = typer.Option(256, help="Encoder token limit per document.")
SHARD_SIZE = typer.Option(4096, help="Documents per encoding checkpoint shard.")
THREADS = typer.Option(None, help="Encoder CPU threads (default: torch's).")
BM25_FIELDS = typer.Option(None, help="flat (title+text in one field) or multifield (default: flat).")
BM25_THREADS = typer.Option(None, help="Lucene indexing threads (default: 2).")
SPARSE_DOC_TOP_K = typer.Option(None, help="Keep only the k heaviest terms per document.")
SPARSE_PARAM = typer.Option(
    [], help="Sparse index parameter KEY=VALUE (SparseParams field; repeatable), e.g. n_postings=4000."
)
DENSE_FACTORY = typer.Option(
    None, help="FAISS factory string: Flat, HNSW32, IVF1024,PQ32 (default: Flat up to 200k docs, else HNSW32)."
)
DENSE_EF_CONSTRUCTION = typer.Option(None, help="HNSW efConstruction.")
PARAM = typer.Option(
    [], "--param", help="Any registered retriever's build parameter RETRIEVER.KEY=VALUE (repeatable; "
    "KEY may be dotted for nested ones, e.g. sparse.index.n_postings=4000); VALUE is JSON or a string.",
)
SKIP_INVALID = typer.Option(False, help="Skip invalid corpus records (and count them) instead of failing.")
DEBUG = typer.Option(False, "--debug", help="Show the traceback of an error.")


def build_config(
    *,
    retrievers: str | None,
    device: str,
    batch_size: int,
    max_length: int,
    shard_size: int,
    threads: int | None,
    sparse_model: str | None = None,
    dense_model: str | None = None,
    bm25_fields: str | None = None,
    bm25_threads: int | None = None,
    sparse_doc_top_k: int | None = None,
    sparse_param: Sequence[str] = (),
    dense_factory: str | None = None,
    dense_ef_construction: int | None = None,
    param: Sequence[str] = (),
) -> BuildConfig:
    """The BuildConfig the build options ask for: the named flags map into per-retriever params,
    then each ``--param RETRIEVER.KEY=VALUE`` is applied."""
    from trident_search.indexers.build import DEFAULT_RETRIEVERS, BuildConfig
    from trident_search.indexers.retriever import registered

    names = tuple(r.strip() for r in retrievers.split(",") if r.strip()) if retrievers else DEFAULT_RETRIEVERS
    params: dict[str, dict[str, Any]] = {}

    def put(name: str, key: str, value: Any) -> None:
        if value is not None:
            params.setdefault(name, {})[key] = value

    put("sparse", "model", sparse_model)
    put("sparse", "doc_top_k", sparse_doc_top_k)
    if sparse_param:
        put("sparse", "index", _key_values(sparse_param, "--sparse-param"))
    put("dense", "model", dense_model)
    put("dense", "factory", dense_factory)
    put("dense", "ef_construction", dense_ef_construction)
    put("bm25", "fields", bm25_fields)
    put("bm25", "threads", bm25_threads)
    for path, value in _key_values(param, "--param").items():
        name, _, key = path.partition(".")
        if not key:
            raise typer.BadParameter(f"expected RETRIEVER.KEY=VALUE, got {path!r}", param_hint="--param")
        target = params.setdefault(name, {})
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise typer.BadParameter(f"{path}: {part} is not a mapping", param_hint="--param")
        target[leaf] = value
    # Flags of registered retrievers that are not built are ignored, as they always were;
    # parameters for an unknown retriever are an error (BuildConfig lists the registered ones).
    known = registered()
    params = {name: p for name, p in params.items() if name in names or name not in known}
    return BuildConfig(
        retrievers=names, device=device, batch_size=batch_size, max_length=max_length,
        shard_size=shard_size, encoder_threads=threads, params=params,
    )


def run_build(build: Callable[[], Manifest], *, out: Path, debug: bool) -> Manifest:
    """Run a build and turn its errors into one line on stderr (the traceback only with --debug)."""
    from trident_search.errors import TridentError
    from trident_search.indexers.corpus import CorpusError
    from trident_search.indexers.publish import describe_os_error

    try:
        return build()
    except (TridentError, OSError, ValueError) as exc:
        if debug:
            traceback.print_exception(exc)
        if isinstance(exc, CorpusError):
            _fail(f"{exc}\n(fix the record, or pass --skip-invalid to skip invalid records)")
        if isinstance(exc, OSError):
            _fail(describe_os_error(exc, out=out.resolve()))
        _fail(str(exc))


def print_summary(out: Path, manifest: Any) -> None:
    corpus = manifest.corpus
    skipped, empty = corpus.get("skipped", 0), corpus.get("empty", 0)
    typer.echo(
        f"built {out}: {manifest.doc_count} documents"
        + (f", {skipped} invalid records skipped" if skipped else "")
        + (f", {empty} empty documents (no title or text) indexed" if empty else "")
        + f", retrievers {', '.join(manifest.retrievers)}"
    )
    for stage, s in getattr(manifest, "stages", {}).items():
        typer.echo(f"  {stage:<14} {s['docs']:>8.0f} docs {s['seconds']:>9.1f} s {s['docs_per_s']:>9.1f} docs/s")


@index_app.command("build")
def build(
    corpus: Path = CORPUS,
    out: Path = OUT,
    retrievers: str | None = RETRIEVERS,
    sparse_model: str | None = SPARSE_MODEL,
    dense_model: str | None = DENSE_MODEL,
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
    shard_size: int = SHARD_SIZE,
    threads: int | None = THREADS,
    bm25_fields: str | None = BM25_FIELDS,
    bm25_threads: int | None = BM25_THREADS,
    sparse_doc_top_k: int | None = SPARSE_DOC_TOP_K,
    sparse_param: list[str] = SPARSE_PARAM,
    dense_factory: str | None = DENSE_FACTORY,
    dense_ef_construction: int | None = DENSE_EF_CONSTRUCTION,
    param: list[str] = PARAM,
    resume: bool = typer.Option(False, help="Continue an interrupted build of --out from its checkpoints."),
    skip_invalid: bool = SKIP_INVALID,
    debug: bool = DEBUG,
) -> None:
    """Build the docstore and every retriever's index for a corpus into one directory.

    Sharded builds on Ray: `trident cluster build --shards N --ray-address ...`.
    """
    from trident_search.indexers.build import build_index

    def go() -> Manifest:
        config = build_config(
            retrievers=retrievers, device=device, batch_size=batch_size, max_length=max_length,
            shard_size=shard_size, threads=threads, sparse_model=sparse_model, dense_model=dense_model,
            bm25_fields=bm25_fields, bm25_threads=bm25_threads, sparse_doc_top_k=sparse_doc_top_k,
            sparse_param=sparse_param, dense_factory=dense_factory,
            dense_ef_construction=dense_ef_construction, param=param,
        )
        return build_index(corpus, out, config, resume=resume, skip_invalid=skip_invalid)

    print_summary(out, run_build(go, out=out, debug=debug))


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


def _key_values(items: Sequence[str], hint: str) -> dict[str, Any]:
    """Parse KEY=VALUE pairs; values are JSON when they parse (numbers, booleans), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=hint)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
