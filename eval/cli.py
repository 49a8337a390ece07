"""``trident eval``: evaluate an index on a BEIR dataset (mounted by ``trident_search.service.cli`` via entry point).

Heavy imports (the engine, Lucene, the encoders) happen inside the command, so ``trident --help``
stays fast.
"""
from __future__ import annotations

import logging
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from trident_search.eval.results import EvalResult

log = logging.getLogger(__name__)

eval_app = typer.Typer(
    name="eval",
    help="Measure retrieval quality and latency on standard benchmarks.",
    no_args_is_help=True,
)


@eval_app.callback()
def _group() -> None:
    """Measure retrieval quality and latency on standard benchmarks."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


@eval_app.command("beir")
def beir(
    dataset: str = typer.Option(..., help="A BEIR folder, or a BEIR name (e.g. scifact) to download."),
    split: str = typer.Option("test", help="The qrels split to report on."),
    index: Path | None = typer.Option(None, help="An index directory built from this dataset's corpus."),
    build: bool = typer.Option(False, "--build", help="Build the index first (into --index, or indexes/<name>)."),
    modes: str = typer.Option(
        "bm25,sparse,sparse-exact,dense,rrf,interpolation",
        help="Comma-separated: bm25, sparse, sparse-exact, dense, rrf, interpolation, rrf-tuned, "
        "interpolation-tuned. Modes whose retriever the index lacks are an error.",
    ),
    tune_on: str | None = typer.Option(
        None, help="Tune fusion on this split (train or dev; never the reported split), store the "
        "winners in the index manifest, and report tuned fusion next to untuned.",
    ),
    out: Path | None = typer.Option(None, help="Report folder (default reports/<dataset name>)."),
    k: int = typer.Option(100, min=1, help="Hits per query (Recall@100 and MAP@100 need 100)."),
    max_queries: int | None = typer.Option(None, min=1, help="Evaluate only the first N queries (smoke runs)."),
    query_backend: str = typer.Option("onnx", help="Query encoder backend: onnx (int8, fast) or torch."),
    threads: int = typer.Option(3, min=1, help="Retriever threads per query (as the server uses)."),
    gzip_runs: bool = typer.Option(False, "--gzip-runs", help="Write the TREC runs as .trec.gz."),
) -> None:
    """Evaluate every mode on a BEIR split; write report.md, report.json, a PNG and TREC runs."""
    from trident_search.eval.beir import BeirDataset, DatasetError
    from trident_search.eval.download import DownloadError, resolve_dataset
    from trident_search.eval.results import EvalResult, load_references
    from trident_search.eval.run import (
        EvalError,
        build_stages,
        check_modes,
        parse_modes,
        run_mode,
        tune_fusion,
    )
    from trident_search.eval.run import (
        modes as eval_modes,
    )
    from trident_search.eval.tuning import TuningError

    started = time.perf_counter()
    try:
        wanted = parse_modes(modes)
        if tune_on is not None and tune_on == split:
            raise EvalError(f"--tune-on {tune_on} equals --split {split}: tune on train or dev, "
                            "never on the split you report")
        ds = BeirDataset.open(resolve_dataset(dataset))
        qrels = ds.qrels(split)
        queries = ds.queries(split)
        tune_queries = ds.queries(tune_on) if tune_on else {}
        tune_qrels = ds.qrels(tune_on) if tune_on else {}
    except (EvalError, DatasetError, DownloadError) as exc:
        raise _fail(str(exc)) from None
    if max_queries:
        queries = dict(list(queries.items())[:max_queries])
        qrels = {q: qrels[q] for q in queries}
    if index is None and not build:
        raise _fail("pass --index DIR (an index of this dataset's corpus) or --build to build one")
    index_dir = index or Path("indexes") / ds.name
    if build:
        _build(ds.corpus, index_dir)
    if tune_on:
        wanted += [m for m in ("rrf-tuned", "interpolation-tuned") if m not in wanted]

    from trident_search.core.engine import Engine
    from trident_search.errors import IndexLoadError

    try:
        engine = Engine.load(index_dir, query_backend=query_backend, threads=threads)
    except IndexLoadError as exc:
        raise _fail(str(exc)) from None
    try:
        check_modes(wanted, engine.retrievers)
        if not tune_on and engine.tuned is None and any(eval_modes()[m].tuned for m in wanted):
            raise EvalError("tuned modes need tuned settings: pass --tune-on train (or dev), or an "
                            "index whose manifest already has a fusion entry")
        _warn_if_other_corpus(engine.manifest, ds.corpus)
        results = [run_mode(engine, m, queries, qrels, k=k) for m in wanted if not eval_modes()[m].tuned]
        tuning = None
        if tune_on:
            tuned = tune_fusion(engine, tune_queries, tune_qrels, split=tune_on, index_dir=index_dir)
            tuning = tuned.to_json()
            engine.close()  # reload: the tuned modes must read the manifest as the server would
            engine = Engine.load(index_dir, query_backend=query_backend, threads=threads)
        results += [run_mode(engine, m, queries, qrels, k=k) for m in wanted if eval_modes()[m].tuned]
        manifest = engine.manifest
    except (EvalError, TuningError) as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.close()

    result = EvalResult(
        dataset=ds.name, split=split, index=str(index_dir), queries=len(queries), modes=results,
        build_stages=build_stages(manifest), tuning=tuning,
        references=load_references(ds.name, split),
        info={
            "command": "trident eval beir " + shlex.join(sys.argv[sys.argv.index("beir") + 1:])
            if "beir" in sys.argv else "trident eval beir",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
            "query_backend": query_backend,
            "k": k,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    from trident_search.eval.report import write_report

    out_dir = out or Path("reports") / ds.name
    write_report(result, out_dir, gzip_runs=gzip_runs)
    _print_table(result)
    typer.echo(f"report: {out_dir / 'report.md'}")


def _build(corpus: Path, index_dir: Path) -> None:
    from trident_search.indexers.build import BuildError, build_index

    try:
        build_index(corpus, index_dir)
    except BuildError as exc:
        raise _fail(str(exc)) from None


def _warn_if_other_corpus(manifest: object, corpus: Path) -> None:
    """An index of another corpus gives meaningless numbers: say so loudly (paths differ)."""
    built_from = (getattr(manifest, "corpus", None) or {}).get("path")
    if built_from and Path(built_from).resolve() != corpus.resolve():
        log.warning("the index was built from %s, not %s: make sure it is the same corpus",
                    built_from, corpus)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _print_table(result: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    from trident_search.eval.report import METRIC_COLUMNS

    table = Table(title=f"{result.dataset} {result.split} ({result.queries} queries)")
    for col in ("mode", *METRIC_COLUMNS, "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for m in result.modes:
        table.add_row(m.mode, *(f"{m.metrics[c]:.4f}" for c in METRIC_COLUMNS),
                      f"{m.latency_ms['p50']:.1f}", f"{m.latency_ms['p99']:.1f}")
    Console().print(table)
