"""Write an evaluation to disk: report.md, report.json, a PNG chart and one TREC run file per mode.

TREC run files use the six-column format trec_eval reads (``qid Q0 docid rank score tag``), so the
runs can be checked with any standard tool; :func:`read_trec_run` reads them back.
"""
from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from trident_search.errors import TridentError
from trident_search.eval.results import EvalResult, Run

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("ndcg@10", "recall@100", "map@100", "mrr@10")
WINS_LOSSES_PNG = "wins_losses.png"


class RunFileError(TridentError, ValueError):
    """A TREC run file line that is not ``qid Q0 docid rank score tag``."""


def _open_text(path: Path, mode: str) -> IO[str]:
    """Plain text, or gzip when the name ends in ``.gz`` (``zcat run.trec.gz | trec_eval ...``)."""
    return gzip.open(path, mode + "t") if path.suffix == ".gz" else path.open(mode)


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: Path, tag: str) -> None:
    """One line per hit, best first within each query (score descending, then docid)."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"a run tag must be one word, got {tag!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_text(path, "w") as fh:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (docid, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def read_trec_run(path: Path) -> Run:
    """Read a six-column TREC run into qid -> docid -> score."""
    run: Run = {}
    with _open_text(Path(path), "r") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            cols = line.split()
            if len(cols) != 6:
                raise RunFileError(f"{path}:{lineno}: expected 6 columns, got {len(cols)}")
            qid, _, docid, rank, score, _ = cols
            try:
                int(rank)
                value = float(score)
            except ValueError:
                raise RunFileError(f"{path}:{lineno}: rank/score not numeric: {line.strip()!r}") from None
            run.setdefault(qid, {})[docid] = value
    return run


def write_report(result: EvalResult, out: Path, *, gzip_runs: bool = False) -> list[Path]:
    """Write every artefact under ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    suffix = ".trec.gz" if gzip_runs else ".trec"
    for mode in result.modes:
        path = out / "runs" / f"{mode.mode}{suffix}"
        write_trec_run(mode.run, path, tag=f"trident-{mode.mode}")
        written.append(path)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    md_path = out / "report.md"
    md_path.write_text(markdown(result))
    png_path = out / "ndcg10.png"
    plot_ndcg(result, png_path)
    written += [json_path, md_path, png_path]
    if result.baseline:
        from trident_search.eval.significance import plot_wins_losses

        chart = out / WINS_LOSSES_PNG
        plot_wins_losses(comparisons(result), chart,
                         title=f"BEIR {result.dataset} {result.split}: per-query nDCG@10 against "
                         f"{result.baseline} (queries sorted by difference)")
        written.append(chart)
    log.info("report written to %s", out)
    return written


def comparisons(result: EvalResult) -> list[Any]:
    """Each mode's comparison with the baseline, with its per-query differences (for the chart)."""
    from trident_search.eval.significance import PairedComparison

    base = next((m for m in result.modes if m.mode == result.baseline), None)
    out = []
    for m in result.modes:
        sig = m.vs_baseline
        if not sig or base is None:
            continue
        mine, theirs = m.per_query.get(sig["metric"], {}), base.per_query.get(sig["metric"], {})
        out.append(PairedComparison(
            mode=m.mode, baseline=sig["baseline"], metric=sig["metric"], mean=sig["mean"],
            baseline_mean=sig["baseline_mean"], t_test_p=sig["t_test_p"],
            randomization_p=sig["randomization_p"], wins=sig["wins"], ties=sig["ties"],
            losses=sig["losses"], n_permutations=sig["n_permutations"],
            deltas={q: mine[q] - theirs[q] for q in mine if q in theirs}))
    return out


def _significance_lines(result: EvalResult) -> list[str]:
    from trident_search.eval.significance import format_p

    if not result.baseline:
        return []
    rows = [m for m in result.modes if m.vs_baseline]
    sig = rows[0].vs_baseline if rows else None
    lines = [
        f"## Significance against {result.baseline}",
        "",
        f"Paired per-query {sig['metric'] if sig else 'ndcg@10'} differences against `{result.baseline}`"
        " (the best single retriever unless `--baseline` named it): a two-sided paired t-test and "
        f"Fisher's randomisation test ({sig['n_permutations'] if sig else 0} permutations), both from "
        "ranx. `p_value` in report.json is the randomisation test's. Wins, ties and losses count "
        f"queries; chart: `{WINS_LOSSES_PNG}`.",
        "",
        "| mode | nDCG@10 | Δ vs baseline | t-test p | randomisation p | wins | ties | losses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        s = m.vs_baseline or {}
        mark = " *" if s["p_value"] < 0.05 else ""
        lines.append(f"| {m.mode} | {s['mean']:.4f} | {s['delta']:+.4f}{mark} | {s['t_test_p']:.3g} | "
                     f"{format_p(s['randomization_p'], s['n_permutations'])} | {s['wins']} | {s['ties']} | "
                     f"{s['losses']} |")
    return [*lines, "", "\\* p < 0.05 (randomisation test).", ""]


def _tuning_lines(t: dict[str, Any]) -> list[str]:
    lines = [
        "## Tuning",
        "",
        f"Grid search on the **{t['split']}** split ({t['queries']} queries, objective "
        f"{t['metric']}, {t['trials']} settings); the test split was never used for tuning.",
        "",
    ]
    for method, score in t["best_score"].items():
        settings = json.dumps(t["best"][method], sort_keys=True)
        lines.append(f"- best {method} on {t['split']}: {score:.4f} with `{settings}`")
    if "adopted" in t:
        cv = t.get("cv") or {}
        verdict = "**adopted** as the served default" if t["adopted"] else "**not adopted**, the served " \
            "default stays"
        lines += ["", f"Decision: {verdict}: {t['reason']}."]
        if cv:
            lines.append(f"Cross-validation: {cv['folds']} folds over {cv['queries']} {t['split']} queries, "
                         f"out-of-fold tuned {cv['mean']:.4f} vs served default `{cv['default']}` "
                         f"{cv['baseline_mean']:.4f} (t-test p {cv['t_test_p']:.3g}, randomisation p "
                         f"{cv['randomization_p']:.3g}; {cv['wins']} wins / {cv['ties']} ties / "
                         f"{cv['losses']} losses).")
        if t.get("manifest"):
            lines.append(f"Manifest: {t['manifest']}.")
    lines.append("")
    return lines


def _build_line(stages: dict[str, float]) -> list[str]:
    if not stages:
        return []
    parts = ", ".join(f"{name} {sec:.1f} s" for name, sec in stages.items())
    return [f"Index build stages recorded in its manifest: {parts} (total {sum(stages.values()):.0f} s).", ""]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown(result: EvalResult) -> str:
    """The human report: our modes and the published rows in one table, then settings."""
    lines = [
        f"# BEIR {result.dataset} ({result.split}): Trident evaluation",
        "",
        f"{result.queries} judged queries. Index: `{result.index}`.",
        "",
        *_build_line(result.build_stages),
        "| system | " + " | ".join(METRIC_COLUMNS) + " | p50 ms | p99 ms |",
        "|---|" + "---:|" * (len(METRIC_COLUMNS) + 2),
    ]
    for m in result.modes:
        cells = [_fmt(m.metrics.get(c)) for c in METRIC_COLUMNS]
        lat = [f"{m.latency_ms.get('p50', 0):.1f}", f"{m.latency_ms.get('p99', 0):.1f}"]
        lines.append(f"| **Trident {m.mode}** | " + " | ".join(cells + lat) + " |")
    for i, ref in enumerate(result.references, start=1):
        cells = [_fmt(ref["metrics"].get(c)) for c in METRIC_COLUMNS]
        lines.append(f"| {ref['system']} [{i}] | " + " | ".join(cells) + " |  |  |")
    identical = ("BEIR's ignore_identical_ids" if result.info.get("ignore_identical_ids", True)
                 else "hits whose id equals the query id kept (--keep-identical-ids)")
    lines += [
        "",
        f"Metrics by pytrec_eval (trec_eval semantics, {identical}). Latency is per "
        "query: one `Engine.search` call in process with k=100, query encoding, retrieval, fusion "
        "and docstore fetch included.",
        "",
        *_significance_lines(result),
    ]
    fused = [m for m in result.modes if m.settings]
    if fused:
        lines += [
            "## Fusion settings",
            "",
            "As the engine reported applying them. Untuned modes send equal weights, RRF k=60 and "
            "min-max explicitly; tuned modes send only the method, and the engine takes weights, k "
            "and normalisation from the tuned entry (`source: manifest`); `hybrid` sends a plain "
            "hybrid request and gets whatever the server's default is.",
            "",
        ]
        for m in fused:
            lines.append(f"- `{m.mode}`: `{json.dumps(m.settings, sort_keys=True)}`")
        lines.append("")
    if result.tuning:
        lines += _tuning_lines(result.tuning)
    if result.references:
        lines += ["## Sources of the published rows", ""]
        for i, ref in enumerate(result.references, start=1):
            note = f" ({ref['note']})" if ref.get("note") else ""
            lines.append(f"{i}. {ref['system']}: {ref['source']}{note}")
        lines.append("")
    if result.info:
        lines += ["## Run", "", "```", *(f"{k}: {v}" for k, v in result.info.items()), "```", ""]
    return "\n".join(lines)


def plot_ndcg(result: EvalResult, path: Path) -> None:
    """Horizontal bars of nDCG@10: our modes in colour, published rows in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"Trident {m.mode}", m.metrics.get("ndcg@10", 0.0), True) for m in result.modes]
    rows += [
        (r["system"], r["metrics"]["ndcg@10"], False)
        for r in result.references
        if "ndcg@10" in r["metrics"]
    ]
    rows.sort(key=lambda r: r[1])
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.4), dpi=110)
    colours = ["tab:blue" if ours else "0.7" for _, _, ours in rows]
    bars = ax.barh([r[0] for r in rows], [r[1] for r in rows], color=colours)
    for bar, (_, value, _) in zip(bars, rows, strict=True):
        ax.text(value + 0.004, bar.get_y() + bar.get_height() / 2, f"{value:.4f}",
                va="center", fontsize=8)
    low = min((r[1] for r in rows), default=0.0)
    ax.set_xlim(max(0.0, low - 0.1), min(1.0, max((r[1] for r in rows), default=1.0) + 0.06))
    ax.set_xlabel("nDCG@10")
    ax.set_title(f"BEIR {result.dataset} {result.split}: nDCG@10 (blue: Trident, grey: published)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
