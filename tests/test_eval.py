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

from trident_search.eval import download
from trident_search.eval.beir import BeirDataset, DatasetError
from trident_search.eval.metrics import evaluate, evaluate_per_query
from trident_search.eval.report import RunFileError, read_trec_run, write_report, write_trec_run
from trident_search.eval.results import EvalResult, ModeResult, latency_summary, load_references
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
from trident_search.core.fusion import fuse


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


def _result() -> EvalResult:
    run = {"q1": {"d1": 1.0}}
    modes = [
        ModeResult("bm25", {"ndcg@10": 0.68, "recall@100": 0.92, "map@100": 0.63, "mrr@10": 0.64},
                   latency_summary([0.002, 0.003, 0.004]), run),
        ModeResult("rrf", {"ndcg@10": 0.71, "recall@100": 0.95, "map@100": 0.66, "mrr@10": 0.67},
                   latency_summary([0.02]), run, {"method": "rrf", "rrf_k": 60}),
    ]
    return EvalResult("scifact", "test", "indexes/x", 1, modes, build_stages={"bm25": 12.0},
                      references=load_references("scifact", "test"), info={"command": "test"})


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


def test_eval_command_end_to_end(tiny_beir: tuple[Path, Path], tmp_path: Path) -> None:
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
    assert set(got) == set(modes.split(",")) | {"rrf-tuned", "interpolation-tuned"}
    test_qrels = BeirDataset.open(ds).qrels("test")
    assert report["queries"] == len(test_qrels)
    for name, mode in got.items():
        assert 0.0 < mode["metrics"]["ndcg@10"] <= 1.0, name
        assert mode["latency_ms"]["p99"] >= mode["latency_ms"]["p50"] > 0.0
        run = read_trec_run(out / "runs" / f"{name}.trec")
        assert set(run) <= set(test_qrels) and all(len(h) <= 100 for h in run.values())
        assert evaluate(test_qrels, run)["ndcg@10"] == pytest.approx(mode["metrics"]["ndcg@10"], abs=1e-4)
    # the tuned settings were written to the manifest and the tuned modes ran with them
    fusion = Manifest.load(index).extra["fusion"]
    assert fusion["tuned_on"]["split"] == "train"
    assert got["rrf-tuned"]["settings"]["weights"] == fusion["rrf"]["weights"]
    assert got["rrf"]["settings"]["rrf_k"] == 60.0
    assert (out / "ndcg10.png").stat().st_size > 1000 and "Trident rrf-tuned" in (out / "report.md").read_text()


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
    ]
    for extra, message in cases:
        result = runner.invoke(eval_app, ["beir", "--dataset", str(ds), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
