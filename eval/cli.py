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
from datetime import UTC, datetime
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
        "bm25,sparse,sparse-exact,dense,rrf,interpolation,hybrid",
        help="Comma-separated: bm25, sparse, sparse-exact, dense, rrf, interpolation, dbsf, rrf-tuned, "
        "interpolation-tuned, hybrid (exactly what a plain hybrid request gets from the server, manifest "
        "defaults included). Modes whose retriever the index lacks are an error.",
    ),
    tune_on: str | None = typer.Option(
        None, help="Tune fusion on this split (train or dev; never the reported split) and report tuned "
        "fusion next to untuned. The tuned setting becomes the served default (mode hybrid) only if its "
        "gain survives k-fold cross-validation on that split; otherwise the default stays and the report "
        "says why.",
    ),
    write_manifest: bool = typer.Option(
        False, "--write-manifest", help="With --tune-on: store an adopted setting in the index manifest "
        "(the entry it replaces is kept under 'previous'; `trident eval restore-fusion` puts it back).",
    ),
    cv_folds: int = typer.Option(5, min=2, help="Cross-validation folds over the tuning queries."),
    baseline: str | None = typer.Option(
        None, help="The mode every other mode is tested against (paired t-test and randomisation test "
        "on per-query nDCG@10). Default: the best single-retriever mode.",
    ),
    keep_identical_ids: bool = typer.Option(
        False, "--keep-identical-ids", help="Score hits whose document id equals the query id (BEIR's "
        "ignore_identical_ids drops them, which loses genuine pairs where both ids are small integers).",
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
    from trident_search.eval.metrics import identical_ids
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
    from trident_search.eval.safe_tuning import write_decision
    from trident_search.eval.tuning import TuningError

    started = time.perf_counter()
    try:
        wanted = parse_modes(modes)
        if write_manifest and tune_on is None:
            raise EvalError("--write-manifest stores what --tune-on decides: pass --tune-on train (or dev)")
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
    if tune_on:
        wanted += [m for m in ("rrf-tuned", "interpolation-tuned", "hybrid") if m not in wanted]
    if baseline is not None and baseline not in wanted:
        raise _fail(f"--baseline {baseline} is not among the modes run ({', '.join(wanted)})")
    if index is None and not build:
        raise _fail("pass --index DIR (an index of this dataset's corpus) or --build to build one")
    index_dir = index or Path("indexes") / ds.name
    if build:
        _build(ds.corpus, index_dir)

    from trident_search.core.engine import Engine
    from trident_search.core.tuned import TunedFusion
    from trident_search.errors import IndexLoadError

    loaded = time.perf_counter()
    try:
        engine = Engine.load(index_dir, query_backend=query_backend, threads=threads)
    except IndexLoadError as exc:
        raise _fail(str(exc)) from None
    startup = time.perf_counter() - loaded
    spec = eval_modes()
    try:
        check_modes(wanted, engine.retrievers)
        if not tune_on and engine.tuned is None and any(spec[m].tuned for m in wanted):
            raise EvalError("tuned modes need tuned settings: pass --tune-on train (or dev), or an "
                            "index whose manifest already has a fusion entry")
        _warn_if_other_corpus(engine.manifest, ds.corpus)
        with identical_ids(ignore=not keep_identical_ids):
            results = [run_mode(engine, m, queries, qrels, k=k) for m in wanted
                       if not (spec[m].tuned or spec[m].served)]
            tuning = None
            candidate = served = engine.tuned
            if tune_on:
                decision = tune_fusion(engine, tune_queries, tune_qrels, split=tune_on, folds=cv_folds)
                tuning = decision.to_json()
                written = write_manifest and write_decision(index_dir, decision)
                tuning["manifest"] = _manifest_note(decision.adopted, write_manifest, index_dir)
                candidate = TunedFusion.model_validate(decision.candidate)
                if written:  # reload: the served default must come from the manifest as the server reads it
                    engine.close()
                    engine = Engine.load(index_dir, query_backend=query_backend, threads=threads)
                    served = engine.tuned
                else:
                    entry = decision.served()
                    served = TunedFusion.model_validate(entry) if entry else None
            engine.tuned = candidate  # rrf-tuned, interpolation-tuned: the tuned winners per method
            results += [run_mode(engine, m, queries, qrels, k=k) for m in wanted if spec[m].tuned]
            engine.tuned = served  # hybrid: the default a server on this index serves after this command
            results += [run_mode(engine, m, queries, qrels, k=k) for m in wanted if spec[m].served]
        manifest = engine.manifest
    except (EvalError, TuningError) as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.close()
    results.sort(key=lambda r: wanted.index(r.mode))
    base = _significance(results, baseline, [m for m in wanted if len(spec[m].needs) == 1])

    result = EvalResult(
        dataset=ds.name, split=split, index=str(index_dir), queries=len(queries), modes=results,
        build_stages=build_stages(manifest), tuning=tuning, baseline=base,
        references=load_references(ds.name, split),
        info={
            "command": "trident eval beir " + shlex.join(sys.argv[sys.argv.index("beir") + 1:])
            if "beir" in sys.argv else "trident eval beir",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
            "query_backend": query_backend,
            "k": k,
            "ignore_identical_ids": not keep_identical_ids,
            "startup_seconds": round(startup, 1),
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


def _warn_if_other_corpus(manifest: object, corpus: Path) -> bool:
    """An index of another corpus gives meaningless numbers: say so loudly.

    Compares content, not paths: the manifest's corpus fingerprint (sha256 of the valid records, as the
    build computed it) with this dataset's corpus, streamed once. A copy elsewhere is the same corpus; an
    edited file at the same path is not. Returns True when they differ.
    """
    from trident_search.indexers.corpus import CorpusError, CorpusReport, iter_corpus

    recorded = getattr(manifest, "corpus", None) or {}
    fingerprint = recorded.get("fingerprint")
    if not fingerprint:
        log.warning("the index manifest records no corpus fingerprint: cannot check that it was built "
                    "from %s", corpus)
        return False
    report = CorpusReport()
    try:
        for _ in iter_corpus(corpus, skip_invalid=True, report=report):
            pass
    except (CorpusError, OSError) as exc:
        log.warning("cannot read %s to check it is the indexed corpus: %s", corpus, exc)
        return False
    if report.fingerprint == fingerprint:
        return False
    log.warning("the index was not built from this corpus: %s has fingerprint %s..., the index's corpus "
                "(%s, %s documents) has %s...; the numbers below do not describe this dataset",
                corpus, report.fingerprint[:12], recorded.get("path", "?"), recorded.get("documents", "?"),
                fingerprint[:12])
    typer.secho(f"warning: the index was not built from {corpus} (corpus fingerprints differ)", err=True,
                fg=typer.colors.YELLOW)
    return True


def _manifest_note(adopted: bool, write: bool, index_dir: Path) -> str:
    if not adopted:
        return "unchanged: tuning kept the served default"
    if write:
        return f"written to {index_dir / 'manifest.json'} (previous entry kept; trident eval restore-fusion)"
    return "unchanged: pass --write-manifest to serve the adopted setting (mode hybrid shows what it serves)"


def _significance(results: list, baseline: str | None, singles: list[str]) -> str | None:
    """Test every mode against the baseline (default: the best single retriever); fills vs_baseline."""
    from trident_search.eval.significance import PRIMARY_METRIC, against_baseline, default_baseline

    base = baseline or default_baseline({r.mode: r.metrics[PRIMARY_METRIC] for r in results}, singles)
    if base is None:
        return None
    comparisons = against_baseline({r.mode: r.per_query[PRIMARY_METRIC] for r in results}, base)
    for r in results:
        r.vs_baseline = comparisons[r.mode].to_json() if r.mode in comparisons else None
    return base


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _print_table(result: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    from trident_search.eval.report import METRIC_COLUMNS

    table = Table(title=f"{result.dataset} {result.split} ({result.queries} queries)")
    versus = f"p vs {result.baseline}" if result.baseline else "p"
    for col in ("mode", *METRIC_COLUMNS, versus, "W/T/L", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for m in result.modes:
        sig = m.vs_baseline
        table.add_row(m.mode, *(f"{m.metrics[c]:.4f}" for c in METRIC_COLUMNS),
                      f"{sig['p_value']:.3g}" if sig else "baseline" if m.mode == result.baseline else "",
                      f"{sig['wins']}/{sig['ties']}/{sig['losses']}" if sig else "",
                      f"{m.latency_ms['p50']:.1f}", f"{m.latency_ms['p99']:.1f}")
    Console().print(table)
    if result.tuning:
        adopted = result.tuning.get("adopted")
        typer.echo(f"tuning: {'adopted' if adopted else 'default kept'}: {result.tuning.get('reason', '')}")
        typer.echo(f"manifest: {result.tuning.get('manifest', '')}")


@eval_app.command("compare")
def compare(
    a: Path = typer.Argument(..., help="The baseline: a TREC run file, or a report folder of trident eval beir."),
    b: Path = typer.Argument(..., help="The run tested against it: same kind as A."),
    qrels: Path | None = typer.Option(
        None, help="Judgements: a BEIR folder (with --split), a BEIR qrels .tsv or a TREC qrels file. "
        "Needed for run files; report folders carry their per-query scores."),
    split: str = typer.Option("test", help="The split, when --qrels is a BEIR folder."),
    mode: list[str] = typer.Option([], help="With report folders: the modes to compare (default: all "
                                   "modes in both)."),
    metric: str = typer.Option("ndcg@10", help="The per-query metric tested."),
    keep_identical_ids: bool = typer.Option(False, "--keep-identical-ids",
                                            help="Do not drop hits whose document id equals the query id."),
    out: Path | None = typer.Option(None, help="Write compare.json and wins_losses.png into this folder."),
) -> None:
    """Is B better than A? Paired t-test and randomisation test (ranx), wins/ties/losses per query."""
    import json

    from trident_search.eval.compare import CompareError, compare_paths
    from trident_search.eval.significance import plot_wins_losses

    try:
        comparisons = compare_paths(a, b, qrels=qrels, split=split, modes=mode, metric=metric,
                                    ignore_identical_ids=not keep_identical_ids)
    except CompareError as exc:
        raise _fail(str(exc)) from None
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{b} vs {a} ({metric}, paired)")
    for col in ("compared", "queries", "A", "B", "B - A", "t-test p", "randomisation p", "W/T/L (B)"):
        table.add_column(col, justify="left" if col == "compared" else "right")
    for c in comparisons:
        table.add_row(c.mode, str(c.queries), f"{c.baseline_mean:.4f}", f"{c.mean:.4f}", f"{c.delta:+.4f}",
                      f"{c.t_test_p:.3g}", f"{c.randomization_p:.3g}", f"{c.wins}/{c.ties}/{c.losses}")
    Console().print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        data = {"a": str(a), "b": str(b), "metric": metric, "ignore_identical_ids": not keep_identical_ids,
                "comparisons": [{"compared": c.mode, **c.to_json()} for c in comparisons]}
        (out / "compare.json").write_text(json.dumps(data, indent=2) + "\n")
        plot_wins_losses(comparisons, out / "wins_losses.png", title=f"{b} vs {a}: per-query {metric}")
        typer.echo(f"written: {out / 'compare.json'}, {out / 'wins_losses.png'}")


@eval_app.command("restore-fusion")
def restore_fusion(index: Path = typer.Option(..., help="The index whose fusion entry to roll back.")) -> None:
    """Put back the fusion entry that the last `eval beir --tune-on --write-manifest` replaced."""
    from trident_search.eval.safe_tuning import restore_previous
    from trident_search.eval.tuning import TuningError

    try:
        previous = restore_previous(index)
    except TuningError as exc:
        raise _fail(str(exc)) from None
    typer.echo("restored: " + (f"fusion method {previous['method']}" if previous else
                               "the built-in default (RRF k=60, equal weights)"))
