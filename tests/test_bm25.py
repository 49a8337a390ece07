"""BM25 on real Lucene over the demo corpus: ranking, batch = single, bad input, filters, broken indexes.

Both indexes are built once per module by Anserini's indexer (a child JVM); searching runs in this
process's JVM, kept small with TRIDENT_JVM_HEAP.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trident_search.indexers import jvm
from trident_search.indexers.bm25 import (
    MAX_QUERY_TERMS,
    PARAMS_FILE,
    BM25Index,
    IndexBuildError,
    IndexLoadError,
)
from trident_search.indexers.corpus import Document, iter_corpus

MODES = ("flat", "multifield")


@pytest.fixture(scope="module", autouse=True)
def small_heap():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(jvm.HEAP_ENV, "256m")
        yield


@pytest.fixture(scope="module")
def docs(demo_dir: Path) -> list[Document]:
    return list(iter_corpus(demo_dir))


@pytest.fixture(scope="module")
def index_dirs(tmp_path_factory, demo_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bm25")
    for mode in MODES:
        BM25Index.build(iter_corpus(demo_dir), root / mode, fields=mode, threads=2)
    return {mode: root / mode for mode in MODES}


@pytest.fixture(scope="module")
def indexes(index_dirs):
    loaded = {mode: BM25Index.load(path) for mode, path in index_dirs.items()}
    yield loaded
    for index in loaded.values():
        index.close()


@pytest.fixture(scope="module")
def queries(demo_dir: Path) -> list[str]:
    lines = (demo_dir / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:40]]


def _ids(hits) -> list[str]:
    return [h.docid for h in hits]


def _same(a, b) -> bool:
    """Same ranking and scores, allowing Anserini's 1e-6 nudges between tied scores."""
    return _ids(a) == _ids(b) and all(abs(x.score - y.score) < 1e-5 for x, y in zip(a, b))


def _vocabulary(docs: list[Document]) -> list[str]:
    """Distinct plain words of the corpus, in first-seen order."""
    seen: dict[str, None] = {}
    for doc in docs:
        for word in re.findall(r"[a-z]{5,}", doc.text.lower()):
            seen.setdefault(word)
    return list(seen)


# ---- build and load -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_build_writes_params_and_every_document(index_dirs, indexes, docs, mode):
    params = json.loads((index_dirs[mode] / PARAMS_FILE).read_text())
    assert params["fields"] == mode and params["documents"] == len(docs)
    assert indexes[mode].num_docs == len(docs) and indexes[mode].fields == mode


def test_build_rejects_bad_arguments(tmp_path, docs):
    with pytest.raises(ValueError, match="fields must be one of"):
        BM25Index.build(docs[:3], tmp_path / "x", fields="title")
    with pytest.raises(ValueError, match="threads"):
        BM25Index.build(docs[:3], tmp_path / "x", threads=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(IndexBuildError, match="not an empty folder"):
        BM25Index.build(docs[:3], tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(IndexBuildError, match="empty"):
        BM25Index.build([], tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_failed_build_leaves_nothing_behind(tmp_path, docs):
    def broken():
        yield from docs[:5]
        raise RuntimeError("corpus read failed")

    with pytest.raises(RuntimeError, match="corpus read failed"):
        BM25Index.build(broken(), tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def test_multifield_keeps_a_document_without_text(tmp_path, docs):
    """Anserini drops a multifield document whose text is empty; we index its title as text."""
    titled = Document("only-title", "Quixotic zebrafish photoreceptor regeneration", "")
    BM25Index.build([*docs[:20], titled], tmp_path / "mf", fields="multifield", threads=1)
    with BM25Index.load(tmp_path / "mf") as index:
        assert index.num_docs == 21
        assert _ids(index.search("quixotic zebrafish", 1)) == ["only-title"]


def test_load_rejects_bad_bm25_parameters(index_dirs):
    with pytest.raises(ValueError, match="k1"):
        BM25Index.load(index_dirs["flat"], b=1.5)


def test_k1_and_b_change_scores(index_dirs, indexes, queries):
    with BM25Index.load(index_dirs["flat"], k1=1.2, b=0.75) as other:
        assert other.search(queries[0], 5) != indexes["flat"].search(queries[0], 5)


# ---- ranking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_documents_title_finds_it_first(indexes, docs, mode):
    for doc in docs[:25]:
        assert indexes[mode].search(doc.title, 3)[0].docid == doc.id, doc.title


@pytest.mark.parametrize("mode", MODES)
def test_hits_are_unique_sorted_and_cut_at_k(indexes, queries, mode):
    for query in queries[:10]:
        hits = indexes[mode].search(query, 15)
        assert 0 < len(hits) <= 15
        assert len(set(_ids(hits))) == len(hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert indexes[mode].search(query, 5) == hits[:5]


def test_unicode_terms_reach_the_index(indexes, docs):
    containing = {d.id for d in docs if "αvβ8" in d.title + " " + d.text}
    assert containing
    for index in indexes.values():
        assert set(_ids(index.search("αvβ8", len(containing)))) == containing
        index.search("café naïve 维生素 😀 Ünïcödé", 5)  # passes the analyzer without error


# ---- batch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_batch_search_equals_single_search(indexes, queries, mode):
    index = indexes[mode]
    batch_queries = [*queries, "", "the of and"]
    qids = [f"q{i}" for i in range(len(batch_queries))]
    batch = index.batch_search(batch_queries, qids, k=20, threads=2)
    assert list(batch) == qids
    for qid, query in zip(qids, batch_queries):
        assert batch[qid] == index.search(query, 20), query
    assert batch[qids[-1]] == [] and batch[qids[-2]] == []


def test_batch_search_rejects_mismatched_or_duplicate_ids(indexes):
    with pytest.raises(ValueError, match="qids"):
        indexes["flat"].batch_search(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="unique"):
        indexes["flat"].batch_search(["a", "b"], ["1", "1"])


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   \t\n ", "the and of or not", "?!.,;", "a" * 100_000])
def test_queries_with_nothing_to_match_give_no_hits(indexes, query):
    for index in indexes.values():
        assert index.search(query, 10) == []
        assert index.search(query, 10, filter_ids=["4983"]) == []


@pytest.mark.parametrize(
    "query",
    [
        'vitamin AND (bone OR "density")',
        'vitamin: bone^2 density~ -"',
        "vitamin* bone? [density] {TO} \\ / ! + - && || ~ ^ :",
        '((("vitamin bone density',
        "title:vitamin bone density",
    ],
)
def test_lucene_syntax_is_plain_text(indexes, query):
    """Operators are stop words or punctuation to the analyzer, so the words alone decide."""
    plain = re.sub(r"[^a-z0-9 ]", " ", query.lower()).replace(" to ", " ").replace("title", "")
    for index in indexes.values():
        hits = index.search(query, 10)
        assert hits
        if not query.startswith("title:"):  # "title:vitamin" stays one token
            assert hits == index.search(plain, 10)


def test_unencodable_characters_do_not_raise(indexes):
    for index in indexes.values():
        assert index.search("vitamin \ud800 D\x00 bone", 5)


@pytest.mark.parametrize("mode", MODES)
def test_long_queries_are_cut_to_max_query_terms(indexes, docs, mode):
    index = indexes[mode]
    words = _vocabulary(docs)
    assert len(words) > 2 * MAX_QUERY_TERMS
    long_query = " ".join(words[: 2 * MAX_QUERY_TERMS])
    prepared = index.prepare(long_query)
    assert prepared.truncated
    assert long_query.startswith(prepared.text) and len(prepared.text) < len(long_query)
    assert not index.prepare(prepared.text).truncated  # exactly MAX_QUERY_TERMS terms are kept
    hits = index.search(long_query, 10)
    assert hits and hits == index.search(prepared.text, 10)
    assert _same(index.search(long_query, 10, filter_ids=_ids(hits)[::2]), hits[::2])
    assert not index.prepare("vitamin D").truncated


def test_bad_arguments_raise_clear_errors(indexes):
    index = indexes["flat"]
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            index.search("bone", k)
    with pytest.raises(TypeError, match="filter_ids"):
        index.search("bone", 5, filter_ids="4983")
    with pytest.raises(TypeError, match="query must be a str"):
        index.prepare(None)  # type: ignore[arg-type]


# ---- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_filter_returns_the_best_allowed_hits_with_unchanged_scores(indexes, queries, mode):
    index = indexes[mode]
    for query in queries[:5]:
        full = index.search(query, 500)
        allowed = set(_ids(full)[3::4]) | {"not-a-doc"}
        expected = [h for h in full if h.docid in allowed]
        assert _same(index.search(query, 5, filter_ids=allowed), expected[:5])
        assert _same(index.search(query, 500, filter_ids=allowed), expected)


@pytest.mark.parametrize("mode", MODES)
def test_filter_to_low_ranked_documents_still_fills_k(indexes, queries, mode):
    index = indexes[mode]
    full = index.search(queries[0], 500)
    assert len(full) > 30
    tail = _ids(full)[-20:]
    assert _ids(index.search(queries[0], 10, filter_ids=tail)) == tail[:10]


def test_filter_edge_cases(indexes, docs):
    index = indexes["flat"]
    assert index.search("bone", 10, filter_ids=[]) == []
    assert index.search("bone", 10, filter_ids={"nope", "nada"}) == []
    unrelated = next(d.id for d in docs if "bone" not in (d.title + d.text).lower())
    assert index.search("bone", 10, filter_ids=[unrelated]) == []
    one = index.search("bone", 1)[0]
    assert _same(index.search("bone", 10, filter_ids=(one.docid,)), [one])


# ---- broken indexes -----------------------------------------------------------------------------


def _broken_copy(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    if how == "no segments file":
        for f in dst.glob("segments_*"):
            f.unlink()
    elif how == "truncated postings":
        f = next(dst.glob("*.doc"))
        f.write_bytes(f.read_bytes()[:50])
    elif how == "garbage segments file":
        next(dst.glob("segments_*")).write_bytes(b"garbage" * 10)
    elif how == "no params file":
        (dst / PARAMS_FILE).unlink()
    elif how == "garbage params file":
        (dst / PARAMS_FILE).write_text("{not json")
    elif how == "only params file":
        for f in dst.iterdir():
            if f.name != PARAMS_FILE:
                f.unlink()
    return dst


@pytest.mark.parametrize(
    "how",
    [
        "no segments file",
        "truncated postings",
        "garbage segments file",
        "no params file",
        "garbage params file",
        "only params file",
    ],
)
def test_corrupt_index_raises_index_load_error_and_process_survives(index_dirs, indexes, tmp_path, how):
    broken = _broken_copy(index_dirs["flat"], tmp_path / "broken", how)
    with pytest.raises(IndexLoadError, match="rebuild"):
        BM25Index.load(broken)
    assert indexes["flat"].search("vitamin D", 3)  # the JVM is still fine


def test_missing_index_raises_index_load_error(tmp_path):
    with pytest.raises(IndexLoadError, match="not a folder"):
        BM25Index.load(tmp_path / "nowhere")


# ---- JVM bootstrap ------------------------------------------------------------------------------


def test_java_home_override_must_be_a_java(monkeypatch, tmp_path):
    monkeypatch.setenv(jvm.JAVA_HOME_ENV, str(tmp_path))
    with pytest.raises(jvm.JavaNotFoundError, match="bin/java is missing"):
        jvm.java_home()


def test_java_home_rejects_old_java(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "java").write_text("")
    (tmp_path / "lib" / "server").mkdir(parents=True)
    (tmp_path / "lib" / "server" / "libjvm.so").write_text("")
    (tmp_path / "release").write_text('JAVA_VERSION="17.0.2"\n')
    monkeypatch.setenv(jvm.JAVA_HOME_ENV, str(tmp_path))
    with pytest.raises(jvm.JavaNotFoundError, match="version 17"):
        jvm.java_home()


def test_default_java_is_21_and_goes_first_on_path(monkeypatch):
    monkeypatch.delenv(jvm.JAVA_HOME_ENV, raising=False)
    home = jvm.java_home()
    env = jvm.java_env(home)
    assert env["JAVA_HOME"] == str(home)
    assert env["PATH"].split(os.pathsep)[0] == str(home / "bin")


def test_build_without_java_fails_clearly(monkeypatch, tmp_path, docs):
    monkeypatch.setenv(jvm.JAVA_HOME_ENV, str(tmp_path / "no-java"))
    with pytest.raises(jvm.JavaNotFoundError, match="TRIDENT_JAVA_HOME"):
        BM25Index.build(docs[:3], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_load_without_java_fails_clearly_in_a_fresh_process(index_dirs, tmp_path):
    """No JVM yet, and the override points nowhere: a Python error, not a dead process."""
    code = (
        "from trident_search.indexers.bm25 import BM25Index\n"
        "from trident_search.indexers.jvm import JavaNotFoundError\n"
        "try:\n"
        f"    BM25Index.load({str(index_dirs['flat'])!r})\n"
        "except JavaNotFoundError as exc:\n"
        "    print('JavaNotFoundError:', exc)\n"
    )
    env = {**os.environ, jvm.JAVA_HOME_ENV: str(tmp_path / "no-java")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "JavaNotFoundError: no Java at" in done.stdout


def test_heap_size_is_validated(monkeypatch):
    monkeypatch.setenv(jvm.HEAP_ENV, "lots")
    with pytest.raises(ValueError, match="TRIDENT_JVM_HEAP"):
        jvm.heap_size()
    monkeypatch.setenv(jvm.HEAP_ENV, "768m")
    assert jvm.heap_size() == "768m"


# ---- equality with Anserini's own searcher ------------------------------------------------------


def test_ties_across_the_cutoff_rank_exactly_as_anserini(tmp_path, docs, queries):
    """Many documents with one score straddle every cutoff: we must fetch past the margin and break
    the ties by id, with Anserini's rounded and nudged scores, bit for bit."""
    clones = [Document(f"dup-{i:03d}", "", "zebra quagga okapi") for i in range(97, 0, -1)]
    BM25Index.build([*docs[:50], *clones], tmp_path / "ties", fields="flat", threads=2)
    anserini = jvm.autoclass("io.anserini.search.SimpleSearcher")(str(tmp_path / "ties"))
    anserini.set_bm25(0.9, 0.4)
    try:
        with BM25Index.load(tmp_path / "ties") as index:
            for query in ["zebra okapi", *queries[:5]]:
                for k in (1, 7, 40, 200):
                    expected = [(h.docid, float(h.score)) for h in anserini.search(query, k)]
                    assert [(h.docid, h.score) for h in index.search(query, k)] == expected
    finally:
        anserini.close()
