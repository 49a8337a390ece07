"""Ray scale-out on a real multi-node Ray cluster started on loopback by the test itself.

One module-scoped cluster (3 nodes), one sharded build and one single-node build of the same
60-document corpus; then equivalence, faults and recovery, and a leak check at teardown.
BM25 is the documented exception to equivalence (per-shard collection statistics; docs/scaling.md),
so it is checked for coverage, not equality.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trident_search.cluster.build import build_sharded
from trident_search.cluster.layout import ShardedManifest, is_sharded, shard_of
from trident_search.cluster.local import LocalCluster, leftover_processes, local_cluster
from trident_search.cluster.serving import connect_sharded, merge_runs
from trident_search.core.engine import Engine
from trident_search.core.local import LocalIndex
from trident_search.core.schemas import SearchRequest, SearchResponse
from trident_search.errors import InvalidRequestError, NotFoundError
from trident_search.indexers.build import BuildConfig, build_index

from conftest import require

N_DOCS = 60
N_SHARDS = 2
DEADLINE_S = 10.0  # generous: on 2 loaded cores a healthy shard has been seen to need over 5 s
RECOVERY_S = 120.0
# torch fp32 documents: the int8 ONNX document graph quantises activations per batch, so a document's
# weights depend on its batch-mates, and the sharded build batches differently from the single one.
CONFIG = BuildConfig(batch_size=16, shard_size=32, params={
    "bm25": {"threads": 1}, "sparse": {"backend": "torch"}, "dense": {"backend": "torch"}})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    rows = [json.loads(line) for line in (demo_dir / "corpus.jsonl").read_text().splitlines()[:N_DOCS]]
    for i, row in enumerate(rows):
        row["metadata"] = {"group": i % 3}
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def queries(demo_dir: Path) -> list[str]:
    rows = [json.loads(line) for line in (demo_dir / "queries.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows[:6]] + ["cancer cells", "protein"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    """3 loopback nodes in a temp dir of their own under $TMPDIR (Ray's address file included)."""
    require("ray")
    with local_cluster(nodes=3, cpus_per_node=2) as lc:
        temp_dir = lc.temp_dir
        yield lc
    leaked = leftover_processes(temp_dir)
    assert not leaked, f"Ray processes left running after shutdown: {leaked}"


@pytest.fixture(scope="module")
def single(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    out = tmp_path_factory.mktemp("single") / "index"
    build_index(corpus, out, CONFIG)
    engine = Engine.load(out)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def sharded_dir(ray_cluster: LocalCluster, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "index"
    build_sharded(corpus, out, CONFIG, shards=N_SHARDS, address=ray_cluster.address, encode_workers=1)
    return out


@pytest.fixture(scope="module")
def sharded(ray_cluster: LocalCluster, sharded_dir: Path) -> Iterator[Engine]:
    engine = connect_sharded(sharded_dir, address=ray_cluster.address, deadline_s=DEADLINE_S)
    yield engine
    engine.close()


def _request(query: str, mode: str, **kw: object) -> SearchRequest:
    body: dict[str, object] = {"query": query, "mode": mode, "k": 10, "include_text": False, **kw}
    if mode in ("sparse", "hybrid"):
        body["sparse"] = {"exact": True}  # the approximate index prunes per shard; exact is comparable
    return SearchRequest.model_validate(body)


def assert_same_up_to_ties(got: SearchResponse, want: SearchResponse, tol: float = 1e-4) -> None:
    """Same scores rank by rank; ids may differ only where scores tie."""
    gs, ws = [h.score for h in got.hits], [h.score for h in want.hits]
    assert len(gs) == len(ws)
    np.testing.assert_allclose(gs, ws, rtol=tol, atol=1e-6)
    cutoff = ws[-1] + tol if ws else 0.0
    assert {h.id for h in got.hits if h.score > cutoff} == {h.id for h in want.hits if h.score > cutoff}


def _wait_full(engine: Engine, request: SearchRequest) -> SearchResponse:
    end = time.monotonic() + RECOVERY_S
    while time.monotonic() < end:
        response = engine.search(request)
        if not response.partial:
            return response
        time.sleep(1.0)
    raise AssertionError(f"still partial after {RECOVERY_S} s: missing {response.missing_shards}")


# -- without Ray -----------------------------------------------------------------------------------
def test_assignment_rule_is_stable() -> None:
    """Pinned values: changing the rule would silently misroute documents of existing indexes."""
    assert (shard_of("103007", 1000), shard_of("0", 7)) == (911, 2)
    counts = np.bincount([shard_of(str(i), 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900  # roughly uniform


def test_merge_keeps_the_global_top_depth_by_raw_score() -> None:
    a = {"dense": (["a1", "a2", "a3"], [0.9, 0.5, 0.1], {"dense": 2.0}, None)}
    b = {"dense": (["b1", "b2"], [0.7, 0.5], {"dense": 3.0}, "w")}
    run = merge_runs([a, b], ["dense"], {"dense": 4})["dense"]
    assert [h.docid for h in run.hits] == ["a1", "b1", "a2", "b2"]  # tie at 0.5 broken by docid
    assert run.timings == {"dense": 3.0} and run.warning == "w"


def _wait_gone(pid: int, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return  # exited; a zombie until its new parent reaps it
        except OSError:
            return
        time.sleep(0.2)
    raise AssertionError(f"process {pid} still alive {timeout_s} s after its node was killed")


# -- build ------------------------------------------------------------------------------------------
def test_sharded_build_is_a_complete_partition(sharded_dir: Path, single: Engine, corpus: Path) -> None:
    assert is_sharded(sharded_dir) and not is_sharded(single.backend.path)
    manifest = ShardedManifest.load(sharded_dir)
    assert manifest.doc_count == N_DOCS == single.manifest.doc_count
    assert manifest.corpus["fingerprint"] == single.manifest.corpus["fingerprint"]
    assert manifest.assignment["n_shards"] == N_SHARDS
    seen: list[str] = []
    for i, shard_dir in enumerate(manifest.shard_dirs(sharded_dir)):
        shard = LocalIndex.open(shard_dir, retrievers=[])  # a shard is an ordinary index directory
        try:
            ids = list(shard.external_ids)
            assert ids and all(shard_of(d, N_SHARDS) == i for d in ids)
            assert shard.manifest.retrievers == ["bm25", "sparse", "dense"]
            seen += ids
        finally:
            shard.close()
    corpus_ids = [json.loads(line)["_id"] for line in corpus.read_text().splitlines()]
    assert sorted(seen) == sorted(corpus_ids)
    assert not list(sharded_dir.parent.glob("*.building"))


# -- serving: equivalence ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode,extra", [
    ("dense", {}),
    ("sparse", {}),
    ("hybrid", {"retrievers": ["sparse", "dense"]}),
    ("hybrid", {"retrievers": ["sparse", "dense"], "fusion": {"method": "interpolation"}}),
    ("hybrid", {"retrievers": ["sparse", "dense"], "offset": 5, "explain": True}),
    ("hybrid", {"retrievers": ["sparse", "dense"], "dense": {"ef_search": 200}}),  # knobs reach the shards
])
def test_sharded_equals_single_node(
    sharded: Engine, single: Engine, queries: list[str], mode: str, extra: dict
) -> None:
    for q in queries:
        got, want = sharded.search(_request(q, mode, **extra)), single.search(_request(q, mode, **extra))
        assert not got.partial and got.missing_shards == []
        assert_same_up_to_ties(got, want)
        for g, w in zip(got.hits, want.hits, strict=True):
            if g.id == w.id:
                assert (g.title, g.metadata) == (w.title, w.metadata)


def test_bm25_and_three_way_hybrid_cover_every_shard(sharded: Engine, single: Engine) -> None:
    """BM25 scores use per-shard statistics (documented); the scatter still covers every shard."""
    request = _request("protein cells", "bm25", k=N_DOCS)
    got, want = sharded.search(request), single.search(request)
    assert not got.partial
    assert {shard_of(h.id, N_SHARDS) for h in got.hits} == set(range(N_SHARDS))
    assert {h.id for h in got.hits} == {h.id for h in want.hits}  # same matching documents
    assert sharded.search(_request("protein cells", "hybrid")).hits


def test_filters_and_documents_go_to_the_owning_shards(
    sharded: Engine, single: Engine, queries: list[str]
) -> None:
    request = _request(queries[2], "hybrid", retrievers=["sparse", "dense"], filters={"group": 1})
    got, want = sharded.search(request), single.search(request)
    assert got.hits and all(h.metadata["group"] == 1 for h in got.hits)
    assert_same_up_to_ties(got, want)
    doc = single.backend.docstore.get([0])[0]
    assert sharded.document(doc.id).title == doc.title
    with pytest.raises(NotFoundError):
        sharded.document("no-such-id")
    with pytest.raises(InvalidRequestError):  # raised inside a shard actor, re-raised as itself
        sharded.search(_request("cells", "dense", filters={"bad field!": 1}))


# -- serving: faults --------------------------------------------------------------------------------
def test_killed_shard_actor_gives_partial_results_then_recovers(sharded: Engine, queries: list[str]) -> None:
    import ray

    request = _request(queries[0], "dense")
    full = sharded.search(request)
    victim = sharded.backend.shards.replicas[1][0]
    ray.kill(victim.handle, no_restart=False)
    partial = sharded.search(request)
    assert partial.partial and partial.missing_shards == ["shard-0001"]
    assert partial.hits and all(shard_of(h.id, N_SHARDS) != 1 for h in partial.hits)
    victim.avoid_until = 0.0  # let the router try the restarted actor at once
    assert_same_up_to_ties(_wait_full(sharded, request), full)


def test_lost_worker_node_gives_partial_results_within_the_deadline_then_recovers(
    ray_cluster: LocalCluster, sharded: Engine, queries: list[str]
) -> None:
    import ray

    request = _request(queries[1], "dense")
    full = sharded.search(request)
    head = ray_cluster.nodes[0].node_id
    pings = [ray.get(reps[0].handle.ping.remote()) for reps in sharded.backend.shards.replicas]
    placed = [p["node_id"] for p in pings]
    shard = next(i for i, node_id in enumerate(placed) if node_id != head)
    node = next(n for n in ray_cluster.nodes if n.node_id == placed[shard])
    lost = sorted(sharded.backend.shards.names[i] for i, node_id in enumerate(placed) if node_id == placed[shard])
    ray_cluster.kill_node(node)
    _wait_gone(pings[shard]["pid"])  # an orphaned actor can answer direct calls until it exits
    partial = sharded.search(request)  # returns by the deadline although the node is gone
    assert partial.partial and partial.missing_shards == lost
    for reps in sharded.backend.shards.replicas:
        reps[0].avoid_until = 0.0
    assert_same_up_to_ties(_wait_full(sharded, request), full)
    ray_cluster.add_node()  # leave the cluster as big as we found it


def test_a_replica_takes_over_when_one_dies(
    ray_cluster: LocalCluster, sharded_dir: Path, queries: list[str]
) -> None:
    import ray

    engine = connect_sharded(sharded_dir, address=ray_cluster.address, replicas=2, deadline_s=DEADLINE_S)
    try:
        request = _request(queries[2], "dense")
        full = engine.search(request)
        for reps in engine.backend.shards.replicas:
            ray.kill(reps[0].handle, no_restart=False)
        answer = engine.search(request)  # every first choice is gone; the twins answer
        assert not answer.partial
        assert_same_up_to_ties(answer, full)
    finally:
        engine.close()
