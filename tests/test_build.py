"""The index build job: end to end, crash safety, resume, corpus validation and the manifest.

Runs real components (Lucene, SPLADE-tiny, MiniLM, FAISS, SQLite) on a 40-document slice of the
demo corpus plus one empty document, encoded in shards of 8 so a build can be killed between
checkpoints. The registry, publish and fault tests use a toy retriever defined here (fast).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from trident_search.indexers import build as build_mod
from trident_search.indexers import publish
from trident_search.indexers.build import BuildConfig, BuildError, build_index
from trident_search.indexers.checkpoint import ShardStore
from trident_search.indexers.cli import index_app
from trident_search.indexers.corpus import CorpusReport, Document, iter_corpus
from trident_search.indexers.docstore import DocStore
from trident_search.indexers.manifest import MANIFEST, Manifest
from trident_search.indexers.publish import PUBLISHING, old_dir, recover, work_dir
from trident_search.indexers.retriever import (
    BuildContext,
    DocumentEncoder,
    Part,
    QueryEncoder,
    Retriever,
    register,
    unregister,
)

REPO = Path(__file__).resolve().parent.parent
CONFIG = BuildConfig(shard_size=8, batch_size=8, max_length=64, encoder_threads=1)
CLI_OPTIONS = ["--shard-size", "8", "--batch-size", "8", "--max-length", "64", "--threads", "1"]
QUERY_DOC = 17  # a document whose title, used as a query, must come first for every retriever
N_DOCS = 41  # 40 demo documents and one empty one


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    lines = (demo_dir / "corpus.jsonl").read_text().splitlines()[:40]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    records = [json.loads(line) for line in lines]
    for i, rec in enumerate(records):
        rec["metadata"] = {"group": "even" if i % 2 == 0 else "odd"}
    records.append({"_id": "empty", "title": "", "text": "  ", "metadata": {"group": "odd"}})  # valid
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
        assert "empty" not in {h.docid for h in bm25.search(query + " the", k=N_DOCS)}
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
    assert sum(1 for _ in iter_corpus(corpus, report=report)) == manifest.doc_count == N_DOCS
    assert manifest.corpus["fingerprint"] == report.fingerprint and manifest.corpus["skipped"] == 0
    assert manifest.corpus["empty"] == 1  # the empty document is indexed, not skipped
    assert manifest.format_version == 1 and manifest.created_at
    assert manifest.retrievers == ["bm25", "sparse", "dense"]
    for kind in ("sparse", "dense"):
        assert manifest.models[kind]["name"] and manifest.models[kind]["revision"]
    assert manifest.models["dense"]["dim"] == 384
    common = {"retrievers", "device", "batch_size", "max_length", "shard_size", "encoder_threads", "skip_invalid"}
    assert common <= manifest.params.keys()
    assert manifest.params["dense"]["factory"] == "Flat" and manifest.params["sparse"]["index"]
    assert manifest.params["bm25"] == {"fields": "flat", "threads": 2}
    on_disk = {p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file()}
    readers = {"docs.sqlite-wal", "docs.sqlite-shm"}  # SQLite's WAL reader files, made by opening it
    assert on_disk - {MANIFEST} - readers == set(manifest.files)
    assert manifest.verify(reference) == []
    assert {"docstore", "bm25 index", "sparse encode", "sparse index", "dense encode", "dense index"} <= set(
        manifest.stages
    )
    assert not work_dir(reference).exists() and not old_dir(reference).exists()


def test_kill_during_encoding_keeps_old_index_and_resume_is_identical(
    tmp_path: Path, corpus: Path, reference: Path
) -> None:
    out = tmp_path / "index"
    shutil.copytree(reference, out)  # a previous good index at --out
    before = _checksums(out)
    cmd = [sys.executable, "-m", "trident_search.indexers", "build", "--corpus", str(corpus), "--out", str(out),
           *CLI_OPTIONS]
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
    assert len(DocStore.open(out / "docs.sqlite")) == N_DOCS

    # resuming keeps the finished shards and reproduces the uninterrupted build byte for byte
    finished = ShardStore(shard.parent).complete()
    assert 2 <= finished < 6
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
    assert manifest.stages["sparse encode"]["docs"] == timed_before + N_DOCS - 8 * finished
    assert manifest.stages["dense encode"]["docs"] == N_DOCS
    assert not work_dir(out).exists()


def test_resume_with_other_settings_is_refused(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "index"
    work = work_dir(out)
    work.mkdir(parents=True)
    (work / "build-state.json").write_text(json.dumps({"identity": {"config": "other"}, "done": []}))
    with pytest.raises(Exception, match="other settings"):
        build_index(corpus, out, CONFIG, resume=True)


def test_crash_between_renames_is_repaired(tmp_path: Path) -> None:
    """The two-rename fallback (no atomic exchange): recover() puts back the old or installs the new."""
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
    (work / PUBLISHING).write_text("{}")
    recover(out)
    assert (out / MANIFEST).read_text() == "new" and not old.exists() and not work.exists()
    assert not (out / PUBLISHING).exists()


def test_crash_after_the_exchange_is_repaired(tmp_path: Path) -> None:
    """After the atomic exchange the marker is in --out and the previous index in the work folder."""
    out, work = tmp_path / "index", work_dir(tmp_path / "index")
    out.mkdir()
    (out / MANIFEST).write_text("new")
    (out / PUBLISHING).write_text("{}")
    work.mkdir()
    (work / MANIFEST).write_text("old")
    recover(out)
    assert (out / MANIFEST).read_text() == "new" and not (out / PUBLISHING).exists()
    assert not work.exists() and not old_dir(out).exists()


def test_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(index_app, ["build", "--corpus", str(corpus), "--out", str(out)])
    assert result.exit_code == 2 and "not a Trident index" in result.output
    assert (out / "thesis.tex").read_text() == "precious"


BAD_RECORDS = {
    "invalid JSON": (b'{"_id": "x", "text": ', "invalid JSON"),
    "missing _id": (b'{"title": "t", "text": "body"}', "missing '_id'"),
    "duplicate id": (b'{"_id": "a", "text": "again"}', "duplicate _id 'a'"),
    "invalid UTF-8": (b'{"_id": "u", "text": "caf\xe9"}', "invalid UTF-8 (byte 0xe9"),
    "lone surrogate": (b'{"_id": "s", "text": "\\ud800"}', "lone surrogate U+D800"),
    "text not a string": (b'{"_id": "n", "text": 42}', "'text' must be a string"),
    "id not a string": (b'{"_id": ["x"], "text": "t"}', "'_id' must be a non-empty string"),
    "metadata not an object": (b'{"_id": "m", "text": "t", "metadata": [1]}', "'metadata' must be an object"),
    "not an object": (b'["_id", "text"]', "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_corpus_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    bad, reason = BAD_RECORDS[case]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"_id": "a", "title": "A", "text": "first"}\n\n' + bad + b"\n")
    result = CliRunner().invoke(
        index_app, ["build", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), "--retrievers", "dense"]
    )
    assert result.exit_code == 2
    assert f"{corpus}:3: " in result.output and reason in result.output
    assert "--skip-invalid" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "idx").exists() and not work_dir(tmp_path / "idx").exists()


def test_skip_invalid_counts_and_builds_the_rest(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    good = [b'{"_id": "a", "title": "Aspirin", "text": "reduces fever"}',
            b'{"_id": "b", "text": "statins and the heart"}']
    empty = b'{"_id": "e", "title": " ", "text": ""}'  # valid: indexed and counted, never skipped
    bad = [BAD_RECORDS[c][0] for c in sorted(BAD_RECORDS)]
    corpus.write_bytes(b"\n".join([good[0], *bad, empty, good[1]]) + b"\n")
    out = tmp_path / "idx"
    result = CliRunner().invoke(
        index_app,
        ["build", "--corpus", str(corpus), "--out", str(out), "--retrievers", "dense", "--skip-invalid"],
    )
    assert result.exit_code == 0, result.output
    assert f"{len(BAD_RECORDS)} invalid records skipped" in result.output
    assert "1 empty documents" in result.output
    manifest = Manifest.load(out)
    assert manifest.doc_count == 3 and manifest.corpus["skipped"] == len(BAD_RECORDS)
    assert list(DocStore.open(out / "docs.sqlite").external_ids()) == ["a", "e", "b"]


# -- the registry drives the build: a toy retriever defined only here ---------------------------------
class ToyEncoder(DocumentEncoder):
    """Hashes words into an 8-d count vector; counts the documents it encodes."""

    calls = 0

    def encode(self, docs: Sequence[Document]) -> np.ndarray:
        ToyEncoder.calls += len(docs)
        out = np.zeros((len(docs), 8), np.float32)
        for i, d in enumerate(docs):
            for w in f"{d.title} {d.text}".split():
                out[i, sum(w.encode()) % 8] += 1
        return out

    def model_info(self) -> dict[str, Any]:
        return {"name": "toy-hash", "revision": "1", "dim": 8}


class ToyRetriever(Retriever):
    name = "toy"

    def check_params(self, params: dict[str, Any]) -> None:
        if not isinstance(params.get("scale", 1), (int, float)):
            raise ValueError("toy scale must be a number")

    def document_encoder(self, ctx: BuildContext) -> DocumentEncoder:
        return ToyEncoder()

    def write(self, out: Path, ctx: BuildContext, *, docs: Callable[[], Iterator[Document]],
              chunks: Callable[[], Iterator[Any]] | None) -> dict[str, Any]:
        assert chunks is not None
        matrix = np.concatenate(list(chunks())) * ctx.params.get("scale", 1)
        assert len(matrix) == ctx.n_docs == sum(1 for _ in docs())
        np.save(out / "vectors.npy", matrix)
        return {"scale": ctx.params.get("scale", 1), "rows": len(matrix)}

    def query_encoder(self, manifest: Manifest, *, backend: str) -> QueryEncoder:
        raise NotImplementedError

    def open(self, path: Path, manifest: Manifest, *, external_ids: np.ndarray) -> Part:
        raise NotImplementedError


def _toy_config() -> BuildConfig:
    return BuildConfig(retrievers=("toy",), shard_size=2, batch_size=2)


@pytest.fixture
def toy() -> Iterator[ToyRetriever]:
    retriever = register(ToyRetriever())
    ToyEncoder.calls = 0
    yield retriever
    unregister("toy")


def _toy_corpus(path: Path, n: int, tag: str) -> Path:
    path.write_text("".join(json.dumps({"_id": f"{tag}{i}", "text": f"{tag} word{i} w{i % 3}"}) + "\n"
                            for i in range(n)))
    return path


def test_a_registered_retriever_is_built_checkpointed_and_recorded(tmp_path: Path, toy: ToyRetriever) -> None:
    corpus = _toy_corpus(tmp_path / "c.jsonl", 5, "a")
    manifest = build_index(corpus, tmp_path / "idx", BuildConfig(retrievers=("toy",), shard_size=2,
                                                                  params={"toy": {"scale": 2}}))
    assert manifest.retrievers == ["toy"] and manifest.models["toy"]["name"] == "toy-hash"
    assert manifest.params["toy"] == {"scale": 2, "rows": 5}
    assert {"docstore", "toy encode", "toy index"} <= manifest.stages.keys()
    assert np.load(tmp_path / "idx" / "toy" / "vectors.npy").shape == (5, 8) and ToyEncoder.calls == 5


def test_cli_validates_retrievers_and_params_against_the_registry(tmp_path: Path, toy: ToyRetriever) -> None:
    corpus = _toy_corpus(tmp_path / "c.jsonl", 3, "a")
    out = tmp_path / "idx"
    run = CliRunner().invoke
    result = run(index_app, ["build", "--corpus", str(corpus), "--out", str(out), "--retrievers", "bm25,nope"])
    assert result.exit_code == 2 and "nope" in result.output and "registered: bm25, sparse, dense, toy" in result.output
    result = run(index_app, ["build", "--corpus", str(corpus), "--out", str(out), "--retrievers", "sparse",
                             "--sparse-param", "no_such=1"])
    assert result.exit_code == 2 and "unknown sparse parameters ['no_such']" in result.output
    result = run(index_app, ["build", "--corpus", str(corpus), "--out", str(out), "--param", "tyo.scale=2"])
    assert result.exit_code == 2 and "unknown retriever 'tyo'" in result.output
    assert not out.exists() and not work_dir(out).exists()  # refused before any work
    result = run(index_app, ["build", "--corpus", str(corpus), "--out", str(out), "--retrievers", "toy",
                             "--param", "toy.scale=3", "--shard-size", "2"])
    assert result.exit_code == 0, result.output
    assert Manifest.load(out).params["toy"] == {"scale": 3, "rows": 3}


def test_cli_maps_the_named_flags_into_per_retriever_params() -> None:
    from trident_search.indexers.cli import build_config

    config = build_config(
        retrievers="bm25,sparse,dense", device="cpu", batch_size=4, max_length=32, shard_size=8, threads=1,
        sparse_model="m1", dense_model="m2", bm25_fields="multifield", bm25_threads=1, sparse_doc_top_k=64,
        sparse_param=["n_postings=400"], dense_factory="HNSW32", dense_ef_construction=80,
        param=["sparse.index.heap_factor=0.8"],
    )
    assert config.params == {
        "sparse": {"model": "m1", "doc_top_k": 64, "index": {"n_postings": 400, "heap_factor": 0.8}},
        "dense": {"model": "m2", "factory": "HNSW32", "ef_construction": 80},
        "bm25": {"fields": "multifield", "threads": 1},
    }
    plain = build_config(retrievers=None, device="auto", batch_size=32, max_length=256, shard_size=4096, threads=None)
    assert plain == BuildConfig()  # no flags: the library defaults, so --resume identities agree


# -- publish: a crash at every step leaves the old or the new index, and --resume finishes ------------
class Crash(BaseException):
    """A simulated kill: not an Exception, so no handler tidies up after it."""


def _publish_steps(monkeypatch: pytest.MonkeyPatch, fail_at: int | None, error: BaseException) -> list[str]:
    """Count the filesystem steps of swap_in (renames, replaces, exchange, unlink, rmtree);
    raise ``error`` at step ``fail_at``."""
    steps: list[str] = []
    active = [False]

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if active[0]:
                steps.append(name)
                if fail_at is not None and len(steps) - 1 == fail_at:
                    raise error
            return fn(*args, **kwargs)
        return step

    monkeypatch.setattr(os, "rename", wrap("rename", os.rename))
    monkeypatch.setattr(os, "replace", wrap("replace", os.replace))
    monkeypatch.setattr(publish, "_exchange", wrap("exchange", publish._exchange))
    monkeypatch.setattr(publish.shutil, "rmtree", wrap("rmtree", shutil.rmtree))
    monkeypatch.setattr(Path, "unlink", wrap("unlink", Path.unlink))
    swap_in = publish.swap_in

    def publishing(*args: Any) -> None:
        active[0] = True
        try:
            swap_in(*args)
        finally:
            active[0] = False

    monkeypatch.setattr(build_mod, "swap_in", publishing)
    return steps


def _which(out: Path, fingerprints: dict[str, str]) -> str:
    return fingerprints[Manifest.load(out).corpus["fingerprint"]]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("error", [Crash(), OSError(errno.EIO, "I/O error")], ids=["crash", "oserror"])
def test_a_fault_at_each_publish_step_leaves_old_or_new_and_resume_finishes(
    tmp_path: Path, toy: ToyRetriever, monkeypatch: pytest.MonkeyPatch, exchange: bool, error: BaseException
) -> None:
    if not exchange:
        monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    old_corpus, new_corpus = _toy_corpus(tmp_path / "old.jsonl", 3, "o"), _toy_corpus(tmp_path / "new.jsonl", 4, "n")
    fingerprints = {}
    for name, c in (("old", old_corpus), ("new", new_corpus)):
        report = CorpusReport()
        list(iter_corpus(c, report=report))
        fingerprints[report.fingerprint] = name
    build_index(old_corpus, tmp_path / "probe", _toy_config())
    with monkeypatch.context() as m:
        steps = _publish_steps(m, None, error)
        build_index(new_corpus, tmp_path / "probe", _toy_config())  # a replacing publish: count its steps
    assert len(steps) >= 4, steps
    for i in range(len(steps)):
        out = tmp_path / f"idx{i}"
        build_index(old_corpus, out, _toy_config())
        with monkeypatch.context() as m:
            _publish_steps(m, i, error)
            with pytest.raises((Crash, BuildError)):
                build_index(new_corpus, out, _toy_config())
        # the old or the new index is at --out, whole, whichever step failed; without an atomic
        # exchange there is one window (between the two renames) where both wait beside --out
        if exchange or out.exists():
            assert _which(out, fingerprints) in ("old", "new") and Manifest.load(out).verify(out) == []
        else:
            assert old_dir(out).is_dir() and (work_dir(out) / MANIFEST).is_file()
        encoded = ToyEncoder.calls
        manifest = build_index(new_corpus, out, _toy_config(), resume=True)
        assert ToyEncoder.calls == encoded, f"step {i}: --resume encoded again"
        assert _which(out, fingerprints) == "new" and manifest.doc_count == 4
        assert not work_dir(out).exists() and not old_dir(out).exists() and not (out / PUBLISHING).exists()


def test_resume_of_a_published_build_does_nothing(tmp_path: Path, toy: ToyRetriever) -> None:
    corpus = _toy_corpus(tmp_path / "c.jsonl", 3, "a")
    first = build_index(corpus, tmp_path / "idx", _toy_config())
    calls = ToyEncoder.calls
    again = build_index(corpus, tmp_path / "idx", _toy_config(), resume=True)
    assert ToyEncoder.calls == calls and again.created_at == first.created_at
    _toy_corpus(corpus, 3, "b")  # the corpus changed: rebuilt
    rebuilt = build_index(corpus, tmp_path / "idx", _toy_config(), resume=True)
    assert rebuilt.corpus["fingerprint"] != first.corpus["fingerprint"]


# -- full disk, read-only target, permissions: one line, nothing left but checkpoints ----------------
def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")


def test_enospc_while_writing_keeps_only_checkpoints_and_resume_does_not_reencode(
    tmp_path: Path, toy: ToyRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _toy_corpus(tmp_path / "c.jsonl", 5, "a")
    out = tmp_path / "idx"
    with monkeypatch.context() as m:
        m.setattr(ToyRetriever, "write", _enospc)
        result = CliRunner().invoke(index_app, ["build", "--corpus", str(corpus), "--out", str(out),
                                                "--retrievers", "toy", "--shard-size", "2", "--batch-size", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.strip()
    assert "\n" not in line and "no space left on the device" in line and "--resume" in line
    work = work_dir(out)
    assert sorted(p.name for p in work.iterdir()) == ["build-state.json", "checkpoints"]
    assert ShardStore(work / "checkpoints" / "toy").complete() == 3 and not out.exists()
    calls = ToyEncoder.calls
    manifest = build_index(corpus, out, _toy_config(), resume=True)
    assert ToyEncoder.calls == calls and manifest.doc_count == 5 and not work.exists()


def test_enospc_on_a_checkpoint_leaves_no_partial_file(
    tmp_path: Path, toy: ToyRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _toy_corpus(tmp_path / "c.jsonl", 5, "a")
    out = tmp_path / "idx"
    real_write = ShardStore.write

    def write(self: ShardStore, i: int, block: Any) -> None:
        if i == 1:
            tmp = self.dir / ".000001.npy.tmp"
            tmp.write_bytes(b"half")  # what a full disk leaves, removed by write_atomic's clean-up
            real = os.fsync

            def full(fd: int) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(os, "fsync", full)
            try:
                real_write(self, i, block)
            finally:
                monkeypatch.setattr(os, "fsync", real)
        else:
            real_write(self, i, block)

    monkeypatch.setattr(ShardStore, "write", write)
    with pytest.raises(BuildError, match="no space left.*1 encoding checkpoint shards .* kept .*--resume"):
        build_index(corpus, out, _toy_config())
    assert [p.name for p in (work_dir(out) / "checkpoints" / "toy").iterdir()] == ["000000.npy"]
    monkeypatch.undo()
    manifest = build_index(corpus, out, _toy_config(), resume=True)
    # shards 0 and 1 (lost to the full disk), then 1 and 2 again
    assert manifest.doc_count == 5 and ToyEncoder.calls == 2 + 2 + 3


def test_enospc_before_any_checkpoint_leaves_nothing(
    tmp_path: Path, toy: ToyRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _toy_corpus(tmp_path / "c.jsonl", 3, "a")
    monkeypatch.setattr(DocStore, "add", _enospc)
    with pytest.raises(BuildError, match="nothing was left behind"):
        build_index(corpus, tmp_path / "idx", _toy_config())
    assert not work_dir(tmp_path / "idx").exists()


def test_unwritable_target_is_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, toy: ToyRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _toy_corpus(tmp_path / "c.jsonl", 3, "a")
    out = tmp_path / "ro" / "idx"
    real_open = open

    def read_only(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    args = ["build", "--corpus", str(corpus), "--out", str(out), "--retrievers", "toy"]
    result = CliRunner().invoke(index_app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "read-only file system: choose another --out on a writable one" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(index_app, [*args, "--debug"])
    assert result.exit_code == 2 and "Traceback" in result.output
    monkeypatch.undo()
    denied = OSError(errno.EACCES, "Permission denied", str(out.parent / "x"))
    assert "permission denied" in publish.describe_os_error(denied, out=out)
