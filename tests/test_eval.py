"""Evaluation: BEIR loader, metrics, fusion tuning, reports, TREC runs and dataset resolution."""
from __future__ import annotations

import hashlib
import json
import math
import random
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from trident_search.core.fusion import fuse
from trident_search.eval import download
from trident_search.eval.beir import BeirDataset, DatasetError
from trident_search.eval.metrics import evaluate, evaluate_per_query, identical_ids
from trident_search.eval.report import RunFileError, read_trec_run, write_report, write_trec_run
from trident_search.eval.results import EvalResult, ModeResult, latency_summary, load_references
from trident_search.eval.safe_tuning import decide, per_query, restore_previous, served_settings, write_decision
from trident_search.eval.significance import against_baseline, default_baseline, paired
from trident_search.eval.tuning import (
    FusionSettings,
    TuningError,
    grid,
    manifest_fusion,
    tune,
    weight_grid,
    write_manifest_fusion,
)
from trident_search.indexers.hits import Hit
from trident_search.indexers.manifest import Manifest


def log2(x: float) -> float:
    return math.log2(x)


# --- loader -------------------------------------------------------------------------------------


def test_loader_reads_demo_fixture(demo_dir: Path) -> None:
    ds = BeirDataset.open(demo_dir)
    assert ds.splits() == ["test", "train"]
    qrels = ds.qrels("test")
    queries = ds.queries("test")
    assert set(queries) == set(qrels)
    assert all(isinstance(t, str) and t for t in queries.values())
    assert all(r > 0 for docs in qrels.values() for r in docs.values())
    assert ds.corpus.name == "corpus.jsonl"


def _beir(tmp_path: Path, *, qrels: str = "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
          queries: str = '{"_id": "q1", "text": "a claim"}\n') -> Path:
    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "title": "t", "text": "x"}\n')
    (root / "queries.jsonl").write_text(queries)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "queries.jsonl").unlink(), "queries.jsonl is missing"),
        (lambda r: (r / "corpus.jsonl").unlink(), "corpus.jsonl"),
        (lambda r: __import__("shutil").rmtree(r / "qrels"), "qrels is missing"),
    ],
)
def test_loader_names_missing_files(tmp_path: Path, breakage, message: str) -> None:
    root = _beir(tmp_path)
    breakage(root)
    with pytest.raises(DatasetError, match=message):
        BeirDataset.open(root)


def test_loader_rejects_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        BeirDataset.open(tmp_path / "nowhere")
    ds = BeirDataset.open(_beir(tmp_path / "a", qrels="q1\td1\n"))
    with pytest.raises(DatasetError, match=r"test.tsv:1: expected 3"):
        ds.qrels("test")
    ds = BeirDataset.open(_beir(tmp_path / "b", qrels="q1\td1\thigh\n"))
    with pytest.raises(DatasetError, match="not an integer"):
        ds.qrels("test")
    with pytest.raises(DatasetError, match=r"no qrels for split 'dev'.*\['test'\]"):
        ds.qrels("dev")
    ds = BeirDataset.open(_beir(tmp_path / "c", queries='{"_id": "q1", "text": "a"\n'))
    with pytest.raises(DatasetError, match=r"queries.jsonl:1: bad query record"):
        ds.queries("test")
    ds = BeirDataset.open(_beir(tmp_path / "d", queries='{"_id": "q2", "text": "a"}\n'))
    with pytest.raises(DatasetError, match="1 judged queries"):
        ds.queries("test")


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_match_hand_computed_values() -> None:
    qrels = {"q1": {"a": 1, "c": 1, "x": 1}, "q2": {"b": 2}}
    run = {
        "q1": {"a": 3.0, "b": 2.0, "c": 1.0},  # relevant at ranks 1 and 3; x never retrieved
        "q2": {"a": 2.0, "b": 1.0},  # the one relevant doc (grade 2) at rank 2
    }
    got = evaluate_per_query(qrels, run)
    dcg1 = 1 / log2(2) + 1 / log2(4)
    idcg1 = 1 / log2(2) + 1 / log2(3) + 1 / log2(4)
    assert got["ndcg@10"]["q1"] == pytest.approx(dcg1 / idcg1)
    assert got["ndcg@10"]["q2"] == pytest.approx((3 / log2(3)) / (3 / log2(2)))  # gain 2^2-1
    assert got["recall@100"]["q1"] == pytest.approx(2 / 3)
    assert got["map@100"]["q1"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert got["mrr@10"]["q2"] == pytest.approx(1 / 2)
    means = evaluate(qrels, run)
    assert means["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)


def test_metrics_count_unanswered_queries_and_cut_mrr() -> None:
    qrels = {"q1": {"d0": 1}, "q2": {"z": 1}}
    run = {"q1": {f"d{i}": 100.0 - i for i in range(20)}}  # relevant at rank 1; q2 has no hits
    assert evaluate(qrels, run)["ndcg@10"] == pytest.approx(0.5)
    late = {"q1": {**{f"n{i}": 100.0 - i for i in range(10)}, "d0": 1.0}}  # relevant at rank 11
    assert evaluate({"q1": {"d0": 1}}, late)["mrr@10"] == 0.0
    assert evaluate({"q1": {"q1": 1}}, {"q1": {"q1": 1.0}})["ndcg@10"] == 0.0  # identical id dropped


# --- tuning -------------------------------------------------------------------------------------


def test_weight_grid_covers_the_simplex() -> None:
    g = weight_grid(["a", "b", "c"], 0.25)
    assert len(g) == math.comb(4 + 2, 2)  # compositions of 4 into 3 parts
    assert all(math.isclose(sum(w.values()), 1.0) for w in g)
    with pytest.raises(TuningError, match="divide 1"):
        weight_grid(["a"], 0.3)


def _constructed_runs() -> tuple[dict, dict]:
    """'good' ranks the relevant doc 2nd; 'noise' never returns it but promotes good's 3rd-20th.

    Any weight on 'noise' lifts a non-relevant document above the relevant one, so the known best
    is all weight on 'good', where nDCG@10 = 1 / log2(3).
    """
    rng = random.Random(7)
    runs: dict[str, dict[str, list[Hit]]] = {"good": {}, "noise": {}}
    qrels = {}
    for q in range(30):
        qid = f"q{q}"
        rel = f"rel{q}"
        qrels[qid] = {rel: 1}
        others = [f"d{q}_{i}" for i in range(40)]
        rng.shuffle(others)
        good = [others[0], rel, *others[1:20]]
        noise = [*others[1:20], *others[20:40]]
        runs["good"][qid] = [Hit(d, 10.0 - i * 0.1) for i, d in enumerate(good)]
        runs["noise"][qid] = [Hit(d, 5.0 - i * 0.01) for i, d in enumerate(noise)]
    return runs, qrels


def test_tuning_picks_the_known_best_weight() -> None:
    runs, qrels = _constructed_runs()
    points = grid(["good", "noise"], weight_step=0.25)
    result = tune(runs, qrels, split="train", points=points)
    for method in ("rrf", "interpolation"):
        assert result.best[method].weights == {"good": 1.0, "noise": 0.0}, method
        assert result.best_score[method] == pytest.approx(1 / log2(3))
    assert len(result.trials) == len(points)
    assert max(score for s, score in result.trials if s.weights["noise"] > 0) < 1 / log2(3)


def test_tuning_fuses_exactly_like_the_engine() -> None:
    """The vectorised grid must score each point as trident_search.core.fusion.fuse ranks it."""
    runs, qrels = _constructed_runs()
    points = [
        FusionSettings("rrf", {"good": 0.3, "noise": 0.7}, rrf_k=10.0),
        FusionSettings("interpolation", {"good": 0.4, "noise": 0.6}, normalization="zscore"),
        FusionSettings("interpolation", {"good": 0.2, "noise": 0.8}, normalization="minmax"),
    ]
    result = tune(runs, qrels, split="dev", points=points)
    for settings, score in result.trials:
        reference = {}
        for qid in qrels:
            fused = fuse({n: r[qid] for n, r in runs.items()}, settings.method,
                         weights=settings.weights, rrf_k=settings.rrf_k,
                         normalization=settings.normalization)
            reference[qid] = {f.docid: f.score for f in fused}
        assert score == pytest.approx(evaluate(qrels, reference, ("ndcg@10",))["ndcg@10"])


def test_tuning_refuses_the_test_split_and_unknown_retrievers() -> None:
    runs, qrels = _constructed_runs()
    with pytest.raises(TuningError, match="test split"):
        tune(runs, qrels, split="test")
    with pytest.raises(TuningError, match="dense"):
        tune(runs, qrels, split="train", points=[FusionSettings("rrf", {"dense": 1.0})])


def test_tuned_settings_go_into_the_manifest_atomically(tmp_path: Path) -> None:
    runs, qrels = _constructed_runs()
    result = tune(runs, qrels, split="train", points=grid(["good", "noise"], weight_step=0.5))
    Manifest("2026-01-01T00:00:00Z", 3, {}, ["bm25"], {}, {}, {}).write(tmp_path)
    entry = manifest_fusion(result)
    write_manifest_fusion(tmp_path, entry)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["doc_count"] == 3
    assert manifest["fusion"]["rrf"]["weights"] == result.best["rrf"].weights
    assert manifest["fusion"]["tuned_on"]["split"] == "train"
    assert manifest["fusion"]["method"] in ("rrf", "interpolation")
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left
    assert Manifest.load(tmp_path).extra["fusion"] == entry
    with pytest.raises(TuningError, match="manifest.json not found"):
        write_manifest_fusion(tmp_path / "missing", entry)


# --- reports and run files ----------------------------------------------------------------------


def test_trec_run_round_trips(tmp_path: Path) -> None:
    run = {"q1": {"d1": 2.5, "d2": 1.25, "d3": 1.25}, "q2": {"d9": -0.5}}
    path = tmp_path / "r.trec"
    write_trec_run(run, path, tag="trident-bm25")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d1 1 2.500000 trident-bm25"
    assert [line.split()[3] for line in lines[:3]] == ["1", "2", "3"]
    assert read_trec_run(path) == run
    zipped = tmp_path / "r.trec.gz"
    write_trec_run(run, zipped, tag="trident-bm25")
    assert read_trec_run(zipped) == run
    path.write_text("q1 Q0 d1 1 2.5\n")
    with pytest.raises(RunFileError, match="r.trec:1: expected 6 columns"):
        read_trec_run(path)
    with pytest.raises(ValueError, match="one word"):
        write_trec_run(run, path, tag="two words")


def _result(*, baseline: str | None = None) -> EvalResult:
    run = {"q1": {"d1": 1.0}}
    bm25_pq = {f"q{i}": 0.5 + 0.01 * (i % 7) for i in range(40)}
    rrf_pq = {q: v + (0.1 if i % 4 else -0.05) for i, (q, v) in enumerate(bm25_pq.items())}
    modes = [
        ModeResult("bm25", {"ndcg@10": 0.68, "recall@100": 0.92, "map@100": 0.63, "mrr@10": 0.64},
                   latency_summary([0.002, 0.003, 0.004]), run, per_query={"ndcg@10": bm25_pq}),
        ModeResult("rrf", {"ndcg@10": 0.71, "recall@100": 0.95, "map@100": 0.66, "mrr@10": 0.67},
                   latency_summary([0.02]), run, {"method": "rrf", "rrf_k": 60}, per_query={"ndcg@10": rrf_pq}),
    ]
    if baseline:
        for m in modes:
            comparison = against_baseline({m.mode: m.per_query["ndcg@10"] for m in modes}, baseline).get(m.mode)
            m.vs_baseline = comparison.to_json() if comparison else None
    return EvalResult("scifact", "test", "indexes/x", 1, modes, build_stages={"bm25": 12.0},
                      references=load_references("scifact", "test"), info={"command": "test"},
                      baseline=baseline)


def test_report_is_written_with_references_and_a_valid_png(tmp_path: Path) -> None:
    paths = write_report(_result(), tmp_path)
    assert {p.name for p in paths} == {"bm25.trec", "rrf.trec", "report.json", "report.md",
                                       "ndcg10.png"}
    md = (tmp_path / "report.md").read_text()
    assert "| **Trident bm25** | 0.6800 |" in md
    assert "bm25 12.0 s" in md
    assert "BM25 flat, Anserini" in md and "0.6789" in md and "regressions-beir-v1.0.0-scifact" in md
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["modes"][1]["settings"] == {"method": "rrf", "rrf_k": 60}
    assert data["modes"][0]["latency_ms"]["p50"] == pytest.approx(3.0)
    with Image.open(tmp_path / "ndcg10.png") as img:
        img.verify()
    with Image.open(tmp_path / "ndcg10.png") as img:
        assert img.format == "PNG" and img.size[0] >= 600 and img.size[1] >= 300
    assert read_trec_run(tmp_path / "runs" / "bm25.trec") == {"q1": {"d1": 1.0}}


def test_every_reference_row_has_a_source() -> None:
    rows = load_references("scifact", "test")
    assert {r["metrics"]["ndcg@10"] for r in rows} >= {0.6789, 0.6647, 0.6451}
    assert all(r["source"].strip() for r in rows)


# --- significance -------------------------------------------------------------------------------


def test_ranx_is_a_dependency_of_eval() -> None:
    """The statistics come from ranx: a main dependency, so its absence fails here instead of skipping."""
    import tomllib

    import ranx.statistical_tests  # noqa: F401 - an ImportError is a failure, never a skip

    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert any(d.replace(" ", "").startswith("ranx") for d in deps["dependencies"])
    assert not any(d.startswith("ranx") for d in deps["optional-dependencies"]["dev"])


def test_paired_test_counts_and_agrees_with_scipy() -> None:
    from scipy.stats import ttest_rel

    base = {f"q{i}": (i % 10) / 10 for i in range(50)}
    better = {q: min(1.0, v + (0.2 if i % 5 else -0.1)) for i, (q, v) in enumerate(base.items())}
    c = paired(better, base, mode="new", baseline="old")
    deltas = [better[q] - base[q] for q in sorted(base)]
    assert (c.wins, c.ties, c.losses) == (sum(d > 0 for d in deltas), sum(d == 0 for d in deltas),
                                          sum(d < 0 for d in deltas))
    assert c.queries == 50 and c.delta == pytest.approx(sum(deltas) / 50)
    assert c.t_test_p == pytest.approx(ttest_rel([base[q] for q in sorted(base)],
                                                 [better[q] for q in sorted(base)]).pvalue)
    assert c.p_value == c.randomization_p < 0.01 and c.significant()
    same = paired(base, dict(base), mode="a", baseline="b")
    assert (same.t_test_p, same.randomization_p, same.ties) == (1.0, 1.0, 50)
    noise = {q: v + (0.01 if i % 2 else -0.01) for i, (q, v) in enumerate(base.items())}
    assert paired(noise, base, mode="n", baseline="b").p_value > 0.5
    with pytest.raises(ValueError, match="no judged query in common"):
        paired({"x": 1.0}, base, mode="n", baseline="b")


def test_default_baseline_is_the_best_single_retriever() -> None:
    means = {"bm25": 0.66, "dense": 0.64, "sparse": 0.67, "rrf": 0.72, "hybrid": 0.73}
    assert default_baseline(means, ["bm25", "dense", "sparse", "sparse-exact"]) == "sparse"
    assert default_baseline({"rrf": 0.7}, ["bm25"]) is None
    with pytest.raises(ValueError, match="baseline 'dense' was not run"):
        against_baseline({"bm25": {"q": 1.0}}, "dense")


def test_report_carries_p_values_and_a_win_loss_chart(tmp_path: Path) -> None:
    paths = write_report(_result(baseline="bm25"), tmp_path)
    assert "wins_losses.png" in {p.name for p in paths}
    data = json.loads((tmp_path / "report.json").read_text())
    modes = {m["mode"]: m for m in data["modes"]}
    assert data["baseline"] == "bm25" and modes["bm25"]["p_value"] is None
    rrf = modes["rrf"]
    assert 0.0 <= rrf["p_value"] < 0.05 and rrf["p_value"] == rrf["vs_baseline"]["randomization_p"]
    assert (rrf["vs_baseline"]["wins"], rrf["vs_baseline"]["losses"]) == (30, 10)
    assert rrf["vs_baseline"]["t_test_p"] < 0.05 and len(rrf["per_query"]["ndcg@10"]) == 40
    md = (tmp_path / "report.md").read_text()
    assert "## Significance against bm25" in md and "| rrf |" in md and "| 30 | 0 | 10 |" in md
    with Image.open(tmp_path / "wins_losses.png") as img:
        assert img.format == "PNG" and img.size[0] >= 600


def test_compare_command_on_run_files_and_report_folders(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trident_search.eval.cli import eval_app

    qrels = {f"q{i}": {f"rel{i}": 1} for i in range(30)}
    weak = {q: {f"x{q}": 3.0, f"rel{q[1:]}": 2.0} for q in qrels}  # relevant second everywhere
    strong = {q: ({f"rel{q[1:]}": 3.0, f"x{q}": 2.0} if int(q[1:]) % 3 else weak[q]) for q in qrels}
    write_trec_run(weak, tmp_path / "a.trec", "a")
    write_trec_run(strong, tmp_path / "b.trec", "b")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, docs in qrels.items() for d in docs))
    runner = CliRunner()
    out = tmp_path / "cmp"
    result = runner.invoke(eval_app, ["compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"),
                                      "--qrels", str(tmp_path / "qrels.tsv"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())["comparisons"][0]
    assert (data["wins"], data["ties"], data["losses"]) == (20, 10, 0)
    assert data["delta"] == pytest.approx(20 / 30 * (1 - 1 / log2(3))) and data["p_value"] < 0.01
    assert (out / "wins_losses.png").stat().st_size > 1000
    # TREC qrels give the same answer
    (tmp_path / "qrels.trec").write_text("".join(f"{q} 0 {d} 1\n" for q, docs in qrels.items() for d in docs))
    again = runner.invoke(eval_app, ["compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"),
                                     "--qrels", str(tmp_path / "qrels.trec")])
    assert again.exit_code == 0 and "20/10/0" in again.output, again.output
    # two report folders: their stored per-query scores
    write_report(_result(baseline="bm25"), tmp_path / "r1")
    write_report(_result(), tmp_path / "r2")
    folders = runner.invoke(eval_app, ["compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "--mode", "rrf"])
    assert folders.exit_code == 0 and "0/40/0" in folders.output, folders.output
    errors = [
        (["compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec")], "pass --qrels"),
        (["compare", str(tmp_path / "a.trec"), str(tmp_path / "r1")], "two run files or two report folders"),
        (["compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "--mode", "dense"], "not in both reports"),
    ]
    for args, message in errors:
        bad = runner.invoke(eval_app, args)
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)


def test_identical_ids_can_be_kept() -> None:
    qrels, run = {"1": {"1": 1, "7": 1}}, {"1": {"1": 2.0, "7": 1.0}}
    assert evaluate(qrels, run)["recall@100"] == pytest.approx(0.5)  # BEIR drops doc "1" for query "1"
    with identical_ids(ignore=False):
        assert evaluate(qrels, run)["recall@100"] == pytest.approx(1.0)
        assert evaluate(qrels, run, ignore_identical_ids=True)["recall@100"] == pytest.approx(0.5)
    assert evaluate(qrels, run)["recall@100"] == pytest.approx(0.5)


# --- tuning that cannot hurt --------------------------------------------------------------------


def _symmetric_runs(n: int, seed: int, prefix: str) -> tuple[dict, dict]:
    """Two equally good retrievers over one pool of 40 documents per query, each placing the relevant
    document at an independent, geometrically distributed rank: equal-weight RRF is the right fusion,
    and any setting a grid search finds on a dozen queries is chance."""
    rng = random.Random(seed)
    runs: dict[str, dict[str, list[Hit]]] = {"a": {}, "b": {}}
    qrels = {}
    for q in range(n):
        qid = f"{prefix}{q}"
        qrels[qid] = {f"rel{qid}": 1}
        pool = [f"{qid}_{i}" for i in range(40)]
        for name, scale in (("a", 1.0), ("b", 7.0)):
            docs = pool[:]
            rng.shuffle(docs)
            docs.insert(min(int(rng.expovariate(1 / 3)), 29), f"rel{qid}")
            runs[name][qid] = [Hit(d, scale * (30 - i) + rng.random()) for i, d in enumerate(docs[:30])]
    return runs, qrels


def test_tuning_on_few_queries_overfits_and_the_gate_keeps_the_default() -> None:
    test_runs, test_qrels = _symmetric_runs(600, 99, "t")
    points = grid(["a", "b"], weight_step=0.25)
    untuned = FusionSettings("rrf", {"a": 1.0, "b": 1.0}, rrf_k=60.0)
    on_test = lambda s: sum(per_query(test_runs, test_qrels, s).values()) / len(test_qrels)  # noqa: E731
    default_score = on_test(untuned)
    naive_losses = 0
    for seed in range(6):
        runs, qrels = _symmetric_runs(12, seed, "q")
        decision = decide(runs, qrels, split="train", points=points, folds=4)
        winner = served_settings(decision.result)
        naive_losses += on_test(winner) < default_score - 1e-9
        # the grid winner looks better on its 12 queries than the default does ...
        assert max(decision.result.best_score.values()) >= sum(per_query(runs, qrels, untuned).values()) / 12
        # ... but the gate does not let it replace the default, and says why
        assert not decision.adopted, decision.reason
        assert "cross-validat" in decision.reason and decision.served() is None
        assert decision.cv["folds"] == 4 and len(decision.cv["fold_winners"]) == 4
    assert naive_losses >= 3  # naive tuning would have hurt on held-out queries in half the subsets


def test_the_gate_adopts_a_real_gain_and_the_manifest_keeps_the_previous_entry(tmp_path: Path) -> None:
    runs, qrels = _constructed_runs()  # 'noise' hurts every query: dropping it is a real gain
    points = grid(["good", "noise"], weight_step=0.25)
    decision = decide(runs, qrels, split="train", points=points)
    assert decision.adopted and "p = " in decision.reason and decision.cv["wins"] == 30
    assert decide(runs, dict(list(qrels.items())[:6]), split="train", points=points).adopted is False
    Manifest("2026-01-01T00:00:00Z", 3, {}, ["bm25"], {}, {}, {}).write(tmp_path)
    assert write_decision(tmp_path, decision)
    entry = Manifest.load(tmp_path).extra["fusion"]
    assert entry["previous"] == {} and entry["decision"]["adopted"] is True
    assert entry[entry["method"]]["weights"] == {"good": 1.0, "noise": 0.0}
    # tuning again starts from the served entry; an adopted result keeps it under 'previous'
    again = decide(runs, qrels, split="train", points=points, current=entry)
    assert again.current == entry
    if again.adopted:
        write_decision(tmp_path, again)
        assert Manifest.load(tmp_path).extra["fusion"]["previous"]["method"] == entry["method"]
        assert "previous" not in Manifest.load(tmp_path).extra["fusion"]["previous"]
        assert restore_previous(tmp_path)["method"] == entry["method"]
    assert restore_previous(tmp_path) is None  # back to the built-in default
    assert "fusion" not in Manifest.load(tmp_path).extra
    with pytest.raises(TuningError, match="no fusion entry"):
        restore_previous(tmp_path)
    rejected = decide(runs, dict(list(qrels.items())[:6]), split="train", points=points)
    assert write_decision(tmp_path, rejected) is False and "fusion" not in Manifest.load(tmp_path).extra


def test_the_corpus_check_compares_fingerprints_not_paths(tmp_path: Path, caplog) -> None:
    from types import SimpleNamespace

    from trident_search.eval.cli import _warn_if_other_corpus
    from trident_search.indexers.corpus import CorpusReport, iter_corpus

    corpus = tmp_path / "a" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text('{"_id": "d1", "title": "t", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
    report = CorpusReport()
    list(iter_corpus(corpus, report=report))
    manifest = SimpleNamespace(corpus={"path": "/elsewhere/corpus.jsonl", "fingerprint": report.fingerprint})
    copy = tmp_path / "b" / "corpus.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(corpus.read_bytes())
    assert _warn_if_other_corpus(manifest, copy) is False  # another path, the same content
    copy.write_text('{"_id": "d1", "title": "t", "text": "x"}\n')
    with caplog.at_level("WARNING"):
        assert _warn_if_other_corpus(manifest, copy) is True
    assert "not built from this corpus" in caplog.text


# --- dataset resolution -------------------------------------------------------------------------


def test_resolve_dataset_accepts_a_path_and_names_bad_input(demo_dir: Path, tmp_path: Path) -> None:
    assert download.resolve_dataset(str(demo_dir)) == demo_dir
    with pytest.raises(download.DownloadError, match="not a BEIR name.*scifact"):
        download.resolve_dataset("no-such-dataset", tmp_path)
    with pytest.raises(download.DownloadError, match="does not exist"):
        download.resolve_dataset(str(tmp_path / "missing"), tmp_path)


def _zip_of(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in folder.rglob("*"):
            zf.write(p, Path("scifact") / p.relative_to(folder))
    return dest


def test_download_checks_the_md5_and_extracts(tmp_path: Path, monkeypatch) -> None:
    src = _beir(tmp_path)
    archive = _zip_of(src, tmp_path / "scifact.zip")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()  # noqa: S324
    cache = tmp_path / "cache"
    with pytest.raises(download.DownloadError, match="checksum mismatch"):
        download.resolve_dataset("scifact", cache, url=archive.as_uri())
    assert not (cache / "beir" / "scifact").exists()
    monkeypatch.setitem(download.BEIR_MD5, "scifact", md5)
    folder = download.resolve_dataset("scifact", cache, url=archive.as_uri())
    assert BeirDataset.open(folder).qrels("test") == {"q1": {"d1": 1}}
    assert download.resolve_dataset("scifact", cache, url="file:///nonexistent") == folder  # cached


def test_download_without_network_says_to_pass_a_path(tmp_path: Path) -> None:
    with pytest.raises(download.DownloadError, match="--dataset PATH"):
        download.resolve_dataset("scifact", tmp_path, url="http://127.0.0.1:9/scifact.zip")


# --- end to end: the command over a tiny real index ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> tuple[Path, Path]:
    """The engine tests' 60-document index (built once per session), copied so tuning can write
    its manifest, next to a BEIR folder of the demo queries judged only on those 60 documents."""
    import shutil

    from service_fixture import build_tiny_index

    root = tmp_path_factory.getbasetemp() / "service-index"
    root.mkdir(exist_ok=True)
    shared = build_tiny_index(root)
    work = tmp_path_factory.mktemp("eval-e2e")
    index = work / "index"
    shutil.copytree(shared, index)
    ds = work / "tiny"
    (ds / "qrels").mkdir(parents=True)
    shutil.copy(root / "corpus.jsonl", ds / "corpus.jsonl")
    shutil.copy(demo_dir / "queries.jsonl", ds / "queries.jsonl")
    docs = {json.loads(line)["_id"] for line in (ds / "corpus.jsonl").open()}
    demo = BeirDataset.open(demo_dir)
    for split in ("test", "train"):
        kept = {q: d for q, d in demo.qrels(split).items() if set(d) <= docs}
        rows = ["query-id\tcorpus-id\tscore"]
        rows += [f"{q}\t{d}\t{r}" for q, rel in kept.items() for d, r in rel.items()]
        (ds / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return ds, index


def test_eval_command_end_to_end(tiny_beir: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from trident_search.eval.cli import eval_app

    from service_fixture import retrievers

    ds, index = tiny_beir
    modes = "bm25,dense,rrf,interpolation" + (",sparse,sparse-exact" if "sparse" in retrievers() else "")
    out = tmp_path / "report"
    args = ["beir", "--dataset", str(ds), "--index", str(index), "--modes", modes,
            "--tune-on", "train", "--out", str(out)]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    got = {m["mode"]: m for m in report["modes"]}
    assert set(got) == set(modes.split(",")) | {"rrf-tuned", "interpolation-tuned", "hybrid"}
    test_qrels = BeirDataset.open(ds).qrels("test")
    assert report["queries"] == len(test_qrels)
    for name, mode in got.items():
        assert 0.0 < mode["metrics"]["ndcg@10"] <= 1.0, name
        assert mode["latency_ms"]["p99"] >= mode["latency_ms"]["p50"] > 0.0
        run = read_trec_run(out / "runs" / f"{name}.trec")
        assert set(run) <= set(test_qrels) and all(len(h) <= 100 for h in run.values())
        assert evaluate(test_qrels, run)["ndcg@10"] == pytest.approx(mode["metrics"]["ndcg@10"], abs=1e-4)
    # 7 judged train queries cannot show a gain: the default is kept, nothing is written, and
    # hybrid (a plain request) is exactly untuned RRF; the tuned modes ran with the tuning winners
    tuning = report["tuning"]
    assert tuning["adopted"] is False and "only 7 judged tuning queries" in tuning["reason"]
    assert "fusion" not in Manifest.load(index).extra
    assert got["hybrid"]["settings"]["source"] == "default"
    assert read_trec_run(out / "runs" / "hybrid.trec") == read_trec_run(out / "runs" / "rrf.trec")
    assert got["rrf-tuned"]["settings"]["weights"] == tuning["candidate"]["rrf"]["weights"]
    assert got["rrf-tuned"]["settings"]["source"] == "manifest"
    assert got["rrf"]["settings"]["rrf_k"] == 60.0
    md = (out / "report.md").read_text()
    assert (out / "ndcg10.png").stat().st_size > 1000 and "Trident rrf-tuned" in md
    # every mode is tested against the best single retriever
    singles = [m for m in got if m in ("bm25", "dense", "sparse", "sparse-exact")]
    assert report["baseline"] == max(singles, key=lambda m: got[m]["metrics"]["ndcg@10"])
    for name, mode in got.items():
        assert (mode["p_value"] is None) == (name == report["baseline"]), name
        if mode["p_value"] is not None:
            sig = mode["vs_baseline"]
            assert 0.0 <= mode["p_value"] <= 1.0 and sig["wins"] + sig["ties"] + sig["losses"] == len(test_qrels)
    assert "## Significance against" in md and "not adopted" in md
    assert (out / "wins_losses.png").stat().st_size > 1000

    # an adopted decision (forced here: 7 queries never pass) is written only with --write-manifest,
    # keeps the entry it replaced, and hybrid then serves it from the manifest
    import dataclasses

    from trident_search.eval import run as run_module

    real = run_module.decide
    monkeypatch.setattr(run_module, "decide", lambda *a, **kw: dataclasses.replace(
        real(*a, **kw), adopted=True, reason="forced by the test"))
    out2 = tmp_path / "report2"
    args = ["beir", "--dataset", str(ds), "--index", str(index), "--modes", "bm25,hybrid", "--tune-on", "train",
            "--baseline", "bm25", "--keep-identical-ids", "--out", str(out2)]
    assert CliRunner().invoke(eval_app, args).exit_code == 0
    assert "fusion" not in Manifest.load(index).extra  # adopted, but no --write-manifest
    result = CliRunner().invoke(eval_app, [*args, "--write-manifest"])
    assert result.exit_code == 0, result.output
    fusion = Manifest.load(index).extra["fusion"]
    assert fusion["previous"] == {} and fusion["decision"]["reason"] == "forced by the test"
    report2 = json.loads((out2 / "report.json").read_text())
    hybrid = {m["mode"]: m for m in report2["modes"]}["hybrid"]
    assert hybrid["settings"]["source"] == "manifest" and hybrid["settings"]["method"] == fusion["method"]
    assert hybrid["settings"]["weights"] == fusion[fusion["method"]]["weights"]
    assert report2["info"]["ignore_identical_ids"] is False and report2["baseline"] == "bm25"
    assert report2["tuning"]["manifest"].startswith("written")
    restored = CliRunner().invoke(eval_app, ["restore-fusion", "--index", str(index)])
    assert restored.exit_code == 0 and "built-in default" in restored.output, restored.output
    assert "fusion" not in Manifest.load(index).extra


def test_eval_command_errors_are_clear(tiny_beir: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trident_search.eval.cli import eval_app

    ds, index = tiny_beir
    runner = CliRunner()
    cases = [
        (["--index", str(index), "--tune-on", "test"], "never on the split you report"),
        (["--index", str(index), "--modes", "bm25,colbert"], "unknown modes"),
        ([], "pass --index DIR"),
        (["--index", str(tmp_path / "none")], "does not exist"),
        (["--index", str(index), "--split", "dev"], "no qrels for split 'dev'"),
        (["--index", str(index), "--write-manifest"], "--write-manifest stores what --tune-on decides"),
        (["--index", str(index), "--modes", "bm25,rrf", "--baseline", "dense"], "--baseline dense is not"),
    ]
    for extra, message in cases:
        result = runner.invoke(eval_app, ["beir", "--dataset", str(ds), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
