"""Sharded BM25 with global statistics scores exactly as the single-node index.

The demo corpus is split into 2 and 4 shards by the cluster's assignment rule, each shard built as
its own Lucene index, and searched with the statistics of all shards: every matching document's raw
Lucene score equals the single-node one bit for bit, and the merged top k equals the single-node top
k (scores to 1e-4, rankings up to ties). Also: the statistics follow shard changes, stale or foreign
statistics are refused, and the shipped jar is the shipped source compiled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trident_search.cluster.layout import shard_of
from trident_search.indexers import jvm
from trident_search.indexers.bm25 import BM25Index, GlobalStats
from trident_search.indexers.bm25.retriever import BM25Part
from trident_search.indexers.corpus import Document, iter_corpus
from trident_search.indexers.hits import Hit
from trident_search.indexers.retriever import RetrieverOptions

MODES = ("flat", "multifield")
BUILDS = {"flat": (1, 2, 4), "multifield": (1, 2)}  # (mode, shard count) pairs built once
CASES = [(mode, n) for mode, ns in BUILDS.items() for n in ns if n > 1]
JAVA = Path(jvm.__file__).parent / "bm25" / "java"


@pytest.fixture(scope="module", autouse=True)
def small_heap():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(jvm.HEAP_ENV, "256m")
        yield


@pytest.fixture(scope="module")
def docs(demo_dir: Path) -> list[Document]:
    return list(iter_corpus(demo_dir))


@pytest.fixture(scope="module")
def queries(demo_dir: Path) -> list[str]:
    lines = (demo_dir / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:60]]


def _split(docs: list[Document], n: int) -> list[list[Document]]:
    return [[d for d in docs if shard_of(d.id, n) == s] for s in range(n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, docs) -> dict[tuple[str, int], list[Path]]:
    """(mode, n) -> index folders: n = 1 is the single-node index."""
    root = tmp_path_factory.mktemp("bm25-global")
    out = {}
    for mode, ns in BUILDS.items():
        for n in ns:
            paths = []
            for s, part in enumerate(_split(docs, n)):
                path = root / f"{mode}-{n}-{s}"
                BM25Index.build(part, path, fields=mode, threads=1)
                paths.append(path)
            out[mode, n] = paths
    return out


@pytest.fixture(scope="module")
def loaded(built):
    indexes = {key: [BM25Index.load(p) for p in paths] for key, paths in built.items()}
    yield indexes
    for group in indexes.values():
        for index in group:
            index.close()


def _with_global(shards: list[BM25Index]) -> list[BM25Index]:
    stats = GlobalStats.of(s.local_stats() for s in shards)
    for s in shards:
        s.set_global_stats(stats)
    return shards


def _raw_scores(index: BM25Index, query: str) -> dict[str, float]:
    """Lucene's raw float score of every matching document (no Anserini rounding)."""
    lucene = index._lucene
    top = lucene.searcher.search(index._query(index.prepare(query).text), index.num_docs)
    docs = np.asarray(lucene._doc_ids.apply(top), dtype=np.int64)
    scores = np.asarray(lucene._scores.apply(top), dtype=np.float32)
    return dict(zip(lucene.ids[docs].tolist(), scores.tolist(), strict=True))


def _merged(shards: list[BM25Index], query: str, k: int) -> list[Hit]:
    """What the sharded router does: every shard's top k, merged by score, ties by id."""
    hits = [h for s in shards for h in s.search(query, k)]
    return sorted(hits, key=lambda h: (-h.score, h.docid))[:k]


def _assert_equal_up_to_ties(single: list[Hit], merged: list[Hit], deeper: dict[str, float]) -> None:
    """Same scores rank by rank (1e-4), every document placed where its single-node score belongs,
    and the same documents wherever no tie straddles the cut."""
    assert len(single) == len(merged)
    for a, b in zip(single, merged, strict=True):
        assert abs(a.score - b.score) <= 1e-4, (a, b)
        assert abs(deeper[b.docid] - b.score) <= 1e-4, (b, deeper[b.docid])
    if single:
        cut = single[-1].score + 1e-4
        assert {h.docid for h in single if h.score > cut} == {h.docid for h in merged if h.score > cut}


@pytest.mark.parametrize(("mode", "n"), CASES)
def test_shards_with_global_stats_score_bit_for_bit_as_single_node(loaded, queries, mode, n):
    single, = loaded[mode, 1]
    shards = _with_global(loaded[mode, n])
    for query in queries:
        expected = _raw_scores(single, query)
        got: dict[str, float] = {}
        for s in shards:
            got.update(_raw_scores(s, query))
        assert got == expected, query


@pytest.mark.parametrize(("mode", "n"), CASES)
def test_merged_top_k_equals_single_node_up_to_ties(loaded, queries, mode, n):
    single, = loaded[mode, 1]
    shards = _with_global(loaded[mode, n])
    for query in queries:
        deeper = {h.docid: h.score for h in single.search(query, single.num_docs)}
        for k in (1, 10, 100):
            _assert_equal_up_to_ties(single.search(query, k), _merged(shards, query, k), deeper)


def test_own_statistics_differ_and_clearing_restores_them(loaded, queries):
    """Sanity: without global statistics the shards do score differently (the test can fail)."""
    single, = loaded["flat", 1]
    shards = _with_global(loaded["flat", 4])
    query = queries[0]
    expected = _raw_scores(single, query)
    own = {}
    for s in shards:
        s.set_global_stats(None)
        assert s.global_stats is None
        own.update(_raw_scores(s, query))
    assert own.keys() == expected.keys() and own != expected
    _with_global(shards)
    assert all(s.global_stats is not None for s in shards)


def test_part_answers_in_internal_ids_and_takes_global_stats(loaded, docs, queries):
    single, = loaded["flat", 1]
    shards = loaded["flat", 2]
    external = np.array([d.id for d in docs])
    stats = GlobalStats.of(s.local_stats() for s in shards)
    for shard in shards:
        mine = np.array([shard_of(d, 2) == shards.index(shard) for d in external.tolist()])
        part = BM25Part(shard, external)  # the shard's docstore would hold only its own docs;
        part.set_global_stats(stats)  # mapping through the full list is the same rule
        results = part.search(queries[1], 10, allowed=None, options=RetrieverOptions())
        assert mine[results.ids].all()
        expected = {h.docid: h.score for h in single.search(queries[1], single.num_docs)}
        for i, score in zip(results.ids.tolist(), results.scores.tolist(), strict=True):
            assert abs(expected[external[i]] - score) <= 1e-4
        allowed = np.zeros(len(external), dtype=bool)
        allowed[results.ids[1:3]] = True
        assert part.search(queries[1], 10, allowed=allowed, options=RetrieverOptions()).ids.tolist() \
            == results.ids[1:3].tolist()


def test_statistics_follow_shard_changes(tmp_path, built, loaded, docs, queries):
    """Shards change (here: each shard of the first 400 documents is replaced by its share of all
    500): the old statistics are refused, gathering them again restores equality with the
    single-node index of the new corpus."""
    paths = []
    for s, part in enumerate(_split(docs[:400], 2)):
        BM25Index.build(part, tmp_path / f"s{s}", fields="flat", threads=1)
        paths.append(tmp_path / f"s{s}")
    shards = [BM25Index.load(p) for p in paths]
    single, = loaded["flat", 1]
    try:
        old = _with_global(shards)[0].global_stats
        for s, path in enumerate(built["flat", 2]):
            shards[s].close()
            shards[s] = BM25Index.load(path)  # the changed shard, reopened
        with pytest.raises(ValueError, match="gather them again"):
            shards[0].set_global_stats(old)
        assert shards[0].global_stats is None
        _with_global(shards)  # refreshed
        for query in queries[:20]:
            expected = _raw_scores(single, query)
            got = {**_raw_scores(shards[0], query), **_raw_scores(shards[1], query)}
            assert got == expected
    finally:
        for s in shards:
            s.close()


def test_foreign_or_bad_statistics_are_refused(loaded):
    shards = loaded["flat", 2]
    other = loaded["multifield", 2]
    with pytest.raises(ValueError, match="gather them again"):  # the other shard's part only
        shards[0].set_global_stats(GlobalStats.of([shards[1].local_stats()]))
    with pytest.raises(ValueError, match="at least one"):
        GlobalStats.of([])
    with pytest.raises(ValueError, match="local_stats"):
        GlobalStats.of([b"nonsense"])
    with pytest.raises(TypeError):
        shards[0].set_global_stats(shards[1].local_stats())  # type: ignore[arg-type]
    # Multifield parts carry a title field too; a flat shard keeps its contents sums, so this works
    # only when the sums cover it: two multifield shards' parts do not include this flat shard.
    with pytest.raises(ValueError):
        shards[0].set_global_stats(GlobalStats.of([o.local_stats() for o in other[:1]]))
    stats = GlobalStats.of([shards[1].local_stats(), shards[0].local_stats()])
    assert stats.fingerprint == GlobalStats.of(s.local_stats() for s in shards).fingerprint
    assert stats.n_parts == 2


# ---- the jar is the source compiled --------------------------------------------------------------


def test_jar_manifest_records_the_source_checksum():
    with zipfile.ZipFile(jvm.trident_jar()) as jar:
        manifest = jar.read("META-INF/MANIFEST.MF").decode()
    recorded = dict(line.split(": ", 1) for line in manifest.splitlines() if ": " in line)
    source = JAVA / "GlobalStatsSearcher.java"
    assert recorded["Trident-Source-SHA256"] == hashlib.sha256(source.read_bytes()).hexdigest(), (
        "indexers/bm25/lib/trident-bm25.jar is stale: run indexers/bm25/java/build.sh"
    )


def test_jar_rebuilds_byte_for_byte_from_the_source(tmp_path):
    if shutil.which("ecj") is None:
        if os.environ.get("CI"):  # CI installs it (.ci/run): a missing compiler is a CI fault there
            pytest.fail("ecj is not installed in CI: `apt-get install -y ecj` (.ci/run)")
        pytest.skip("ecj (the Eclipse Java compiler) is not installed, so the jar cannot be rebuilt "
                    "here: `apt-get install -y ecj`; the source checksum is still checked")
    rebuilt = tmp_path / "rebuilt.jar"
    subprocess.run([str(JAVA / "build.sh"), str(rebuilt)], check=True, capture_output=True)
    with zipfile.ZipFile(jvm.trident_jar()) as a, zipfile.ZipFile(rebuilt) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            assert a.read(name) == b.read(name), f"{name} differs: run indexers/bm25/java/build.sh"
    assert rebuilt.read_bytes() == jvm.trident_jar().read_bytes()


# ---- served: the sharded router over Ray -------------------------------------------------------


@pytest.mark.slow
def test_sharded_serving_scores_bm25_as_single_node(tmp_path_factory, demo_dir, queries):
    """End to end: a 3-shard BM25 index built and served on a private Ray (``connect_sharded``, what
    ``trident serve --ray-address`` runs) answers BM25 requests as the single-node engine does."""
    ray = pytest.importorskip("ray")
    from trident_search.cluster.build import build_sharded
    from trident_search.cluster.serving import connect_sharded
    from trident_search.core.engine import Engine
    from trident_search.core.schemas import SearchRequest
    from trident_search.indexers.build import BuildConfig, build_index

    root = tmp_path_factory.mktemp("served")
    config = BuildConfig(retrievers=("bm25",), params={"bm25": {"threads": 1}})
    build_index(demo_dir, root / "single", config)
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             logging_level="WARNING", log_to_driver=False)
    try:
        build_sharded(demo_dir, root / "sharded", config, shards=3, address="local")
        single = Engine.load(root / "single")
        sharded = connect_sharded(root / "sharded", address="local", deadline_s=30.0)
        try:
            for query in queries[:30]:
                request = SearchRequest.model_validate({"query": query, "mode": "bm25", "k": 20,
                                                        "include_text": False})
                want, got = single.search(request), sharded.search(request)
                assert not got.partial
                deeper = {h.docid: h.score for h in single.runs(query, 500, ["bm25"])["bm25"]}
                _assert_equal_up_to_ties([Hit(h.id, h.score) for h in want.hits],
                                         [Hit(h.id, h.score) for h in got.hits], deeper)
        finally:
            sharded.close()
            single.close()
    finally:
        ray.shutdown()
