"""Scatter-gather serving of a sharded index: shard actors, and a router that fuses globally.

Every shard is held by ``replicas`` Ray actors (:class:`ShardServer`), each a plain single-node
:class:`trident_search.core.local.LocalIndex` over its shard directory, created with ``max_restarts=-1`` and spread
over the nodes. The router is the serving process itself (FastAPI/uvicorn as the Ray driver: about
3 ms of fan-out per query here, where Ray Serve's HTTP ingress cost 10-25 ms).

The router encodes the query once (int8 ONNX query encoders, loaded here) and sends the vectors
with it to one replica of every shard. Each shard returns, per retriever, its own top
``depth`` hits with *raw* scores (filters applied inside the shard). The router merges each
retriever's lists into the global top ``depth``. The router is an ordinary
:class:`~trident_search.core.engine.Engine` composed with :class:`ShardedBackend` as its retrieval
backend and document source, so depth rules, fusion defaults and fusion are the single-node code
(fusion and normalisation see the merged lists, never per-shard ones). The page is then fetched
from the shards that own its documents.

**Deadlines.** Every request has one (``deadline_s``). A replica that fails fast (actor being
restarted) is replaced by another replica of the same shard while time remains; a shard with no
answer by the deadline (node lost: Ray notices only after seconds) is left out, and the response
says ``partial: true`` and names it in ``missing_shards``. A request never hangs and never fails
because of a missing shard. Replicas that failed or timed out are avoided for ``cooldown_s``.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trident_search.cluster.layout import ShardedManifest, shard_of
from trident_search.core.engine import DEFAULT_DEPTH, Engine
from trident_search.core.local import LocalIndex, Retrieved, RetrieverCall, RetrieverRun, ms_since
from trident_search.core.tuned import TunedFusion
from trident_search.errors import IndexLoadError, NotReadyError, TridentError
from trident_search.indexers.docstore import StoredDoc
from trident_search.indexers.hits import Hit
from trident_search.indexers.retriever import QueryEncoder, get

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 2.0
COOLDOWN_S = 5.0

# What a shard sends back per retriever: external ids, raw scores, stage timings, a warning.
WireRun = tuple[list[str], list[float], dict[str, float], str | None]


class ShardServer:
    """A Ray actor holding one shard as an ordinary single-node :class:`LocalIndex`."""

    def __init__(self, shard_dir: str, query_backend: str = "onnx", threads: int = 3) -> None:
        self.index = LocalIndex.open(shard_dir, query_backend=query_backend, threads=threads)
        from trident_search.cluster.bm25_stats import restore_bm25_stats

        restore_bm25_stats(self.index, shard_dir)  # a restarted replica: the router's last global stats
        # Compile and page in every query path now: a shard that reports ready meets its deadlines.
        for name in self.index.retrievers:
            options = get(name).options
            variants = [options()] + ([options(exact=True)] if "exact" in options.model_fields else [])
            for opts in variants:
                self.index.retrieve("warm up", {name: RetrieverCall(10, opts)}, {})

    def ping(self) -> dict[str, Any]:
        import os

        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "doc_count": self.index.manifest.doc_count}

    def retrieve(self, query: str, calls: dict[str, RetrieverCall], filters: dict[str, Any],
                 vectors: dict[str, Any]) -> dict[str, WireRun]:
        got = self.index.retrieve(query, calls, filters, vectors=vectors)
        return {
            r: ([h.docid for h in run.hits], [h.score for h in run.hits],
                {**run.timings, **got.timings}, run.warning)
            for r, run in got.runs.items()
        }

    def bm25_stats(self) -> bytes | None:
        """This shard's BM25 statistics, one part of the global ones (None: no BM25 here)."""
        from trident_search.cluster.bm25_stats import shard_bm25

        part = shard_bm25(self.index)
        return None if part is None else part.local_stats()

    def set_bm25_stats(self, stats: Any) -> None:
        """Score BM25 with the statistics of every shard (``cluster/bm25_stats.py``)."""
        from trident_search.cluster.bm25_stats import shard_bm25

        part = shard_bm25(self.index)
        if part is not None:
            part.set_global_stats(stats)

    def fetch(self, docids: list[str]) -> list[StoredDoc]:
        return self.index.fetch(docids)

    def document(self, doc_id: str) -> StoredDoc | None:
        return self.index.document(doc_id)


@dataclass
class Replica:
    shard: int
    index: int
    handle: Any
    avoid_until: float = 0.0


class ShardSet:
    """The replicas of every shard, and one scatter-gather primitive with a deadline."""

    def __init__(
        self,
        index_dir: Path,
        manifest: ShardedManifest,
        *,
        replicas: int = 1,
        actor_cpus: float = 0.25,
        query_backend: str = "onnx",
        threads: int = 3,
        cooldown_s: float = COOLDOWN_S,
    ) -> None:
        import ray

        self.ray = ray
        self.n = manifest.n_shards
        self.names = [s["name"] for s in manifest.shards]
        self.cooldown_s = cooldown_s
        actor = ray.remote(ShardServer).options(
            num_cpus=actor_cpus, max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD"
        )
        self.replicas = [
            [Replica(i, j, actor.remote(str(d), query_backend, threads)) for j in range(replicas)]
            for i, d in enumerate(manifest.shard_dirs(index_dir))
        ]
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def wait_ready(self, timeout_s: float) -> list[dict[str, Any]]:
        """Block until every replica has loaded its shard; raise with the reason otherwise."""
        refs = [r.handle.ping.remote() for reps in self.replicas for r in reps]
        try:
            return self.ray.get(refs, timeout=timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise IndexLoadError(f"shard actors not ready after {timeout_s:.0f} s; is the cluster "
                                 "big enough (see `ray status`)?") from None
        except self.ray.exceptions.RayActorError as exc:
            raise IndexLoadError(f"a shard actor failed to load its shard: {exc}") from exc

    def _pick(self, shard: int, tried: set[int]) -> Replica | None:
        """A replica not tried yet for this call; healthy ones first, round-robin among them."""
        options = [r for r in self.replicas[shard] if r.index not in tried]
        if not options:
            return None
        now, turn = time.monotonic(), next(self._turn)
        options.sort(key=lambda r: (r.avoid_until > now, (r.index - turn) % len(self.replicas[shard])))
        return options[0]

    def _avoid(self, replica: Replica) -> None:
        with self._lock:
            replica.avoid_until = time.monotonic() + self.cooldown_s

    def call(
        self, method: str, args: dict[int, tuple[Any, ...]], deadline: float
    ) -> tuple[dict[int, Any], list[int]]:
        """Call ``method`` on one replica of each shard in ``args`` before ``deadline`` (monotonic).

        Returns the answers by shard and the shards that gave none. A domain error raised inside a
        shard (a bad filter) is re-raised as itself; a replica that fails is replaced by another one,
        and a shard still silent halfway to the deadline (a replica on a lost node hangs rather than
        fails) is hedged: asked again on another replica, the first answer wins.
        """
        ray = self.ray
        pending: dict[Any, Replica] = {}
        tried: dict[int, set[int]] = {s: set() for s in args}
        hedge_at = time.monotonic() + (deadline - time.monotonic()) / 2

        def submit(shard: int) -> None:
            replica = self._pick(shard, tried[shard])
            if replica is not None:
                tried[shard].add(replica.index)
                pending[getattr(replica.handle, method).remote(*args[shard])] = replica

        for shard in args:
            submit(shard)
        answers: dict[int, Any] = {}
        while pending and len(answers) < len(args):
            now = time.monotonic()
            if now >= deadline:
                break
            wake = hedge_at if now < hedge_at else deadline
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wake - now)
            if not ready and hedge_at <= time.monotonic() < deadline and hedge_at > 0:
                hedge_at = 0.0
                for shard in {r.shard for r in pending.values()} - answers.keys():
                    submit(shard)
            for ref in ready:
                replica = pending.pop(ref)
                if replica.shard in answers:
                    continue  # a hedged twin answered first
                try:
                    answers[replica.shard] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, TridentError):
                        raise exc.cause from None
                    log.warning("%s failed on shard %s: %s", method, self.names[replica.shard], exc)
                    self._avoid(replica)
                    submit(replica.shard)
                except ray.exceptions.RayActorError as exc:
                    log.warning("shard %s replica %d unavailable: %s", self.names[replica.shard],
                                replica.index, type(exc).__name__)
                    self._avoid(replica)
                    submit(replica.shard)
        for replica in pending.values():  # no answer in time: likely on a lost node
            self._avoid(replica)
        return answers, [s for s in args if s not in answers]

    def close(self) -> None:
        for reps in self.replicas:
            for r in reps:
                self.ray.kill(r.handle, no_restart=True)


class ShardedBackend:
    """Retrieval backend and document source of an :class:`Engine` over shards held by Ray actors.

    The router encodes each query once, scatters it with the filters to every shard, and merges
    each retriever's lists by raw score. Shards that do not answer by the request's deadline are
    named in ``Retrieved.missing_shards`` (a later document fetch that misses a shard is added there
    too, so the response's ``partial`` covers both).
    """

    def __init__(self, path: Path, manifest: ShardedManifest, shards: ShardSet, retrievers: list[str],
                 encoders: dict[str, QueryEncoder], *, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.path = path
        self.manifest = manifest
        self.shards = shards
        self.retrievers = retrievers
        self.encoders = encoders
        self.deadline_s = deadline_s
        self._local = threading.local()

    def warm_up(self, timeout_s: float) -> None:
        """One round trip per retriever along the serving path itself (router-encoded vectors, sent
        to every replica), waited for in full: the first real request must not pay for first calls."""
        for name in self.retrievers:
            calls = {name: RetrieverCall(10, get(name).options())}
            vectors = {name: self.encoders[name].encode("warm up")}
            for replica in range(max(len(reps) for reps in self.shards.replicas)):
                handles = [reps[replica].handle for reps in self.shards.replicas if replica < len(reps)]
                try:
                    self.shards.ray.get([h.retrieve.remote("warm up", calls, {}, vectors) for h in handles],
                                        timeout=timeout_s)
                except Exception as exc:  # noqa: BLE001 - a cold replica is slow, not broken: serve anyway
                    log.warning("warm-up of %s on replica %d did not finish: %s", name, replica, exc)

    def retrieve(self, query: str, calls: Mapping[str, RetrieverCall], filters: Mapping[str, Any]) -> Retrieved:
        """Scatter to every shard, gather each one's per-retriever top depth, merge by raw score."""
        self._local.deadline = time.monotonic() + self.deadline_s
        names = list(calls)
        vectors: dict[str, Any] = {}
        timings: dict[str, float] = {}
        for r in names:  # once here, not once per shard
            start = time.perf_counter()
            vectors[r] = self.encoders[r].encode(query)
            timings[f"encode_{r}"] = ms_since(start)
        start = time.perf_counter()
        args = {s: (query, dict(calls), dict(filters), vectors) for s in range(self.shards.n)}
        answers, missing = self.shards.call("retrieve", args, self._local.deadline)
        timings["scatter"] = ms_since(start)
        runs = merge_runs(list(answers.values()), names, {r: c.depth for r, c in calls.items()})
        got = Retrieved(runs, timings, [self.shards.names[s] for s in missing])
        self._local.retrieved = got
        return got

    def fetch(self, ids: Sequence[str]) -> list[StoredDoc]:
        owners: dict[int, list[str]] = {}
        for d in ids:
            owners.setdefault(shard_of(d, self.shards.n), []).append(d)
        deadline = max(getattr(self._local, "deadline", 0.0), time.monotonic() + 0.5)
        answers, missing = self.shards.call("fetch", {s: (part,) for s, part in owners.items()}, deadline)
        got: Retrieved | None = getattr(self._local, "retrieved", None)
        if got is not None:
            got.missing_shards.extend(self.shards.names[s] for s in missing if self.shards.names[s]
                                      not in got.missing_shards)
        docs = {d.id: d for rows in answers.values() for d in rows}
        return [docs.get(d) or StoredDoc(-1, d, "", "", {}) for d in ids]

    def document(self, doc_id: str) -> StoredDoc | None:
        shard = shard_of(doc_id, self.shards.n)
        answers, missing = self.shards.call("document", {shard: (doc_id,)}, time.monotonic() + self.deadline_s)
        if missing:
            raise NotReadyError(f"shard {self.shards.names[shard]}, which holds {doc_id!r}, did not "
                                f"answer within {self.deadline_s} s; retry shortly")
        return answers[shard]

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "doc_count": self.manifest.doc_count,
            "query_encoders": {r: f"{e.description}, in the router" for r, e in self.encoders.items()},
            "manifest": self.manifest.to_dict(),
        }

    def close(self) -> None:
        self.shards.close()
        for enc in self.encoders.values():
            enc.close()


def connect_sharded(
    index_dir: str | Path,
    *,
    address: str,
    replicas: int = 1,
    actor_cpus: float = 0.25,
    deadline_s: float = DEFAULT_DEADLINE_S,
    query_backend: str = "onnx",
    threads: int = 3,
    default_depth: int = DEFAULT_DEPTH,
    load_timeout_s: float = 300.0,
) -> Engine:
    """Join the cluster, start the shard actors, wait until each has loaded its shard, and return
    an :class:`Engine` over them."""
    from trident_search.cluster.runtime import connect
    from trident_search.indexers.manifest import Manifest

    path = Path(index_dir).resolve()
    manifest = ShardedManifest.load(path)
    first = Manifest.load(manifest.shard_dirs(path)[0])
    connect(address)
    shards = ShardSet(path, manifest, replicas=replicas, actor_cpus=actor_cpus,
                      query_backend=query_backend, threads=threads)
    shards.wait_ready(load_timeout_s)
    from trident_search.cluster.bm25_stats import refresh_bm25_stats

    refresh_bm25_stats(shards, path)  # BM25 scores as single-node: every shard gets global statistics
    log.info("serving %s: %d documents in %d shards x %d replicas", path, manifest.doc_count,
             manifest.n_shards, replicas)
    names = list(first.retrievers)
    encoders = {r: get(r).query_encoder(first, backend=query_backend) for r in names}
    backend = ShardedBackend(path, manifest, shards, names, encoders, deadline_s=deadline_s)
    backend.warm_up(load_timeout_s)
    return Engine(backend, backend, manifest=first, tuned=TunedFusion.from_manifest(first),
                  default_depth=default_depth, owned=[backend])


def merge_runs(
    answers: Sequence[dict[str, WireRun]], names: Sequence[str], depths: dict[str, int]
) -> dict[str, RetrieverRun]:
    """Per retriever, the global top ``depth`` of the shards' lists by raw score (ties by docid).

    Each shard's list is its exact top ``depth``, so the global top ``depth`` is among their union.
    Timings are the slowest shard's per stage (shards run in parallel).
    """
    out: dict[str, RetrieverRun] = {}
    for r in names:
        hits: list[Hit] = []
        timings: dict[str, float] = {}
        warnings = set()
        for answer in answers:
            ids, scores, shard_timings, warning = answer[r]
            hits.extend(Hit(d, s) for d, s in zip(ids, scores, strict=True))
            for stage, ms in shard_timings.items():
                timings[stage] = max(timings.get(stage, 0.0), ms)
            if warning:
                warnings.add(warning)
        hits.sort(key=lambda h: (-h.score, h.docid))
        out[r] = RetrieverRun(hits[: depths[r]], timings, "; ".join(sorted(warnings)) or None)
    return out


def load_sharded(settings: Any) -> Engine:
    """The engine loader for a sharded index (``trident serve --ray-address``): the service finds it
    through the ``trident.serving`` entry point, so neither package imports the other."""
    from trident_search.cluster.layout import is_sharded

    index, cluster = settings.server.index, settings.cluster
    if not is_sharded(index):
        raise IndexLoadError(f"{index} is not a sharded index (build one with `trident cluster build "
                             "--shards N --ray-address ...`), or serve it without --ray-address")
    return connect_sharded(index, address=cluster.ray_address or "auto", replicas=cluster.shard_replicas,
                           deadline_s=cluster.shard_deadline_s, query_backend=settings.search.query_backend,
                           threads=settings.search.search_threads, default_depth=settings.search.default_depth)
