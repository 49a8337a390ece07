"""The index build job: end to end, crash safety, resume, corpus validation and the manifest.

Runs real components (Lucene, SPLADE-tiny, MiniLM, FAISS, SQLite) on a 40-document slice of the
demo corpus, encoded in shards of 8 so a build can be killed between checkpoints.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trident_search.indexers.checkpoint import ShardStore
from trident_search.indexers.build import BuildConfig, build_index, old_dir, recover, work_dir
from trident_search.indexers.cli import index_app
from trident_search.indexers.corpus import CorpusReport, iter_corpus
from trident_search.indexers.docstore import DocStore
from trident_search.indexers.manifest import MANIFEST, Manifest

REPO = Path(__file__).resolve().parent.parent
CONFIG = BuildConfig(shard_size=8, batch_size=8, max_length=64, encoder_threads=1)
CLI_OPTIONS = ["--shard-size", "8", "--batch-size", "8", "--max-length", "64", "--threads", "1"]
QUERY_DOC = 17  # a document whose title, used as a query, must come first for every retriever


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    lines = (demo_dir / "corpus.jsonl").read_text().splitlines()[:40]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    records = [json.loads(line) for line in lines]
    for i, rec in enumerate(records):
        rec["metadata"] = {"group": "even" if i % 2 == 0 else "odd"}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """One uninterrupted build, shared by the tests below."""
    out = tmp_path_factory.mktemp("ref") / "index"
    build_index(corpus, out, CONFIG)
    return out


def _checksums(index: Path) -> dict[str, str]:
    return {rel: meta["sha256"] for rel, meta in Manifest.load(index).files.items()}


def test_end_to_end_search_per_retriever(reference: Path, corpus: Path) -> None:
    from trident_search.encoders.dense import DenseEncoder
    from trident_search.encoders.sparse import SparseEncoder
    from trident_search.indexers.bm25 import BM25Index
    from trident_search.indexers.dense import DenseIndex
    from trident_search.indexers.sparse import SparseIndex

    store = DocStore.open(reference / "docs.sqlite")
    target = store.get([QUERY_DOC])[0]
    query = target.title
    with BM25Index.load(reference / "bm25") as bm25:
        assert bm25.search(query, k=3)[0].docid == target.id
    sparse_ids, _ = SparseIndex.load(reference / "sparse").search(
        SparseEncoder().encode_queries([query]), 3
    )
    assert sparse_ids[0] == QUERY_DOC
    dense = DenseIndex.load(reference / "dense")
    vector = DenseEncoder().encode_queries([query])
    dense_ids, _ = dense.search(vector, 3)
    assert dense_ids[0, 0] == QUERY_DOC
    # a metadata filter from the docstore applies inside FAISS
    even = store.matching({"group": "even"})  # QUERY_DOC is odd
    filtered, _ = dense.search(vector, 3, allowed=even)
    assert even[filtered[0]].all() and QUERY_DOC not in filtered[0]


def test_manifest_is_complete(reference: Path, corpus: Path) -> None:
    manifest = Manifest.load(reference)
    report = CorpusReport()
    assert sum(1 for _ in iter_corpus(corpus, report=report)) == manifest.doc_count == 40
    assert manifest.corpus["fingerprint"] == report.fingerprint and manifest.corpus["skipped"] == 0
    assert manifest.format_version == 1 and manifest.created_at
    assert manifest.retrievers == ["bm25", "sparse", "dense"]
    for kind in ("sparse", "dense"):
        assert manifest.models[kind]["name"] and manifest.models[kind]["revision"]
    assert manifest.models["dense"]["dim"] == 384
    assert {f.name for f in fields(BuildConfig)} <= manifest.params.keys()
    assert manifest.params["dense_factory"] == "Flat" and manifest.params["sparse_params"]
    on_disk = {p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file()}
    readers = {"docs.sqlite-wal", "docs.sqlite-shm"}  # SQLite's WAL reader files, made by opening it
    assert on_disk - {MANIFEST} - readers == set(manifest.files)
    assert manifest.verify(reference) == []
    assert {"docstore", "bm25", "sparse encode", "sparse index", "dense encode", "dense index"} <= set(
        manifest.stages
    )
    assert not work_dir(reference).exists() and not old_dir(reference).exists()


def test_kill_during_encoding_keeps_old_index_and_resume_is_identical(
    tmp_path: Path, corpus: Path, reference: Path
) -> None:
    out = tmp_path / "index"
    shutil.copytree(reference, out)  # a previous good index at --out
    before = _checksums(out)
    cmd = [sys.executable, "-m", "trident_search.indexers", "build", "--corpus", str(corpus), "--out", str(out), *CLI_OPTIONS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = work_dir(out) / "checkpoints" / "sparse" / "000001.npz"
    deadline = time.monotonic() + 300
    while not shard.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert shard.exists(), "the build ended before a checkpoint shard appeared"

    # the interrupted build left the previous index whole and loadable
    assert Manifest.load(out).verify(out) == [] and _checksums(out) == before
    assert len(DocStore.open(out / "docs.sqlite")) == 40

    # resuming keeps the finished shards and reproduces the uninterrupted build byte for byte
    finished = ShardStore(shard.parent, "sparse").complete()
    assert 2 <= finished < 5
    state = json.loads((work_dir(out) / "build-state.json").read_text())
    timed_before = state["partial"]["sparse encode"]["docs"]  # may lag the shards by one (killed between)
    manifest = build_index(corpus, out, CONFIG, resume=True)
    assert manifest.verify(out) == []
    resumed, uninterrupted = _checksums(out), _checksums(reference)
    assert resumed.keys() == uninterrupted.keys()
    # Lucene segment files carry random ids and timestamps: compare everything else by bytes
    lucene = {k for k in resumed if k.startswith("bm25/") and not k.endswith(".json")}
    assert {k: v for k, v in resumed.items() if k not in lucene} == {
        k: v for k, v in uninterrupted.items() if k not in lucene
    }
    # only the missing shards were encoded again; the stage timing adds up both runs
    assert manifest.stages["sparse encode"]["docs"] == timed_before + 40 - 8 * finished
    assert manifest.stages["dense encode"]["docs"] == 40
    assert not work_dir(out).exists()


def test_resume_with_other_settings_is_refused(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "index"
    work = work_dir(out)
    work.mkdir(parents=True)
    (work / "build-state.json").write_text(json.dumps({"identity": {"config": "other"}, "done": []}))
    with pytest.raises(Exception, match="other settings"):
        build_index(corpus, out, CONFIG, resume=True)


def test_crash_between_renames_is_repaired(tmp_path: Path) -> None:
    out, old, work = tmp_path / "index", old_dir(tmp_path / "index"), work_dir(tmp_path / "index")
    # crash after moving the old index aside, before the new one was complete: restore the old
    old.mkdir()
    (old / MANIFEST).write_text("old")
    work.mkdir()
    recover(out)
    assert (out / MANIFEST).read_text() == "old" and not old.exists()
    # crash after moving the old index aside, with the new one complete: install the new
    out.rename(old)
    (work / MANIFEST).write_text("new")
    recover(out)
    assert (out / MANIFEST).read_text() == "new" and not old.exists() and not work.exists()


def test_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(index_app, ["build", "--corpus", str(corpus), "--out", str(out)])
    assert result.exit_code == 2 and "not a Trident index" in result.output
    assert (out / "thesis.tex").read_text() == "precious"


BAD_RECORDS = {
    "invalid JSON": ('{"_id": "x", "text": ', "invalid JSON"),
    "missing _id": ('{"title": "t", "text": "body"}', "missing '_id'"),
    "duplicate id": ('{"_id": "a", "text": "again"}', "duplicate _id 'a'"),
    "empty title and text": ('{"_id": "e", "title": " ", "text": ""}', "empty title and text"),
    "text not a string": ('{"_id": "n", "text": 42}', "'text' must be a string"),
    "id not a string": ('{"_id": ["x"], "text": "t"}', "'_id' must be a non-empty string"),
    "metadata not an object": ('{"_id": "m", "text": "t", "metadata": [1]}', "'metadata' must be an object"),
    "not an object": ('["_id", "text"]', "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_corpus_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    bad, reason = BAD_RECORDS[case]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "title": "A", "text": "first"}\n\n' + bad + "\n")
    result = CliRunner().invoke(
        index_app, ["build", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), "--retrievers", "dense"]
    )
    assert result.exit_code == 2
    assert f"{corpus}:3: " in result.output and reason in result.output
    assert "--skip-invalid" in result.output
    assert not (tmp_path / "idx").exists()


def test_skip_invalid_counts_and_builds_the_rest(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    good = ['{"_id": "a", "title": "Aspirin", "text": "reduces fever"}', '{"_id": "b", "text": "statins and the heart"}']
    corpus.write_text("\n".join([good[0], *(BAD_RECORDS[c][0] for c in sorted(BAD_RECORDS)), good[1]]) + "\n")
    out = tmp_path / "idx"
    result = CliRunner().invoke(
        index_app,
        ["build", "--corpus", str(corpus), "--out", str(out), "--retrievers", "dense", "--skip-invalid"],
    )
    assert result.exit_code == 0, result.output
    assert f"{len(BAD_RECORDS)} invalid records skipped" in result.output
    manifest = Manifest.load(out)
    assert manifest.doc_count == 2 and manifest.corpus["skipped"] == len(BAD_RECORDS)
    assert list(DocStore.open(out / "docs.sqlite").external_ids()) == ["a", "b"]
