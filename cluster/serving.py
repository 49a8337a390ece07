"""Scatter-gather serving of a sharded index: shard actors, and a router that fuses globally.

Every shard is held by ``replicas`` Ray actors (:class:`ShardServer`), each a plain single-node
:class:`trident_search.service.engine.Engine` over its shard directory, created with ``max_restarts=-1`` and spread
over the nodes. The router is the serving process itself (FastAPI/uvicorn as the Ray driver: about
3 ms of fan-out per query here, where Ray Serve's HTTP ingress cost 10-25 ms).

The router encodes the query once (int8 ONNX query encoders, loaded here) and sends the vectors
with it to one replica of every shard. Each shard returns, per retriever, its own top
``depth`` hits with *raw* scores (filters applied inside the shard). The router merges each
retriever's lists into the global top ``depth`` and then runs exactly the single-node path:
``Engine.search`` with its depth rules, fusion defaults and ``trident_search.service.fusion`` (fusion and
normalisation must see the merged lists, never per-shard ones). The page is then fetched from the
shards that own its documents.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trident_search.cluster.layout import ShardedManifest, shard_of
from trident_search.indexers.hits import Hit
from trident_search.service.engine import DEFAULT_DEPTH, Engine, RetrieverRun
from trident_search.service.errors import IndexLoadError, NotFoundError, NotReadyError, TridentError
from trident_search.service.schemas import (
    DocumentResponse,
    IndexInfo,
    Retriever,
    RetrieverExplanation,
    SearchHit,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 2.0
COOLDOWN_S = 5.0

# What a shard sends back per retriever: external ids, raw scores, stage timings, a warning.
WireRun = tuple[list[str], list[float], dict[str, float], str | None]


class ShardServer:
    """A Ray actor holding one shard as an ordinary single-node engine."""

    def __init__(self, shard_dir: str, query_backend: str = "onnx", threads: int = 3) -> None:
        self.engine = Engine.load(shard_dir, query_backend=query_backend, threads=threads)
        # Compile and page in every query path now: a shard that reports ready meets its deadlines.
        depths = {r: 10 for r in self.engine.retrievers}
        for exact in (False, True):
            self.engine.retrieve("warm up", self.engine.retrievers, depths, exact=exact)

    def ping(self) -> dict[str, Any]:
        import os

        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "doc_count": self.engine.manifest.doc_count}

    def retrieve(
        self,
        query: str,
        names: list[Retriever],
        depths: dict[Retriever, int],
        filters: dict[str, Any] | None,
        exact: bool,
        vectors: dict[Retriever, Any],
        tuning: dict[Retriever, dict[str, Any]] | None = None,
    ) -> dict[Retriever, WireRun]:
        allowed = self.engine._mask(filters) if filters else None
        runs = self.engine.retrieve(query, names, depths, allowed, exact=exact, vectors=vectors, tuning=tuning)
        return {
            r: ([h.docid for h in run.hits], [h.score for h in run.hits], run.timings, run.warning)
            for r, run in runs.items()
        }

    def fetch(self, docids: list[str]) -> list[tuple[str, str, str, dict[str, Any]]]:
        store = self.engine.docstore
        return [(d.id, d.title, d.text, d.metadata) for d in store.get(store.internal_ids(docids))]

    def document(self, doc_id: str) -> tuple[str, str, str, dict[str, Any]] | None:
        doc = self.engine.docstore.get_by_external(doc_id)
        return None if doc is None else (doc.id, doc.title, doc.text, doc.metadata)


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


class ShardedEngine(Engine):
    """``Engine``'s search path over shards held by Ray actors (see the module docstring).

    Query-time semantics are the single-node ones: this class replaces only where runs come from
    (:meth:`retrieve`: scatter-gather, with filters applied inside the shards), where documents come
    from (:meth:`_hydrate`) and what a response says about missing shards.
    """

    def __init__(
        self,
        path: Path,
        manifest: ShardedManifest,
        shards: ShardSet,
        retrievers: list[Retriever],
        encoders: dict[Retriever, Any],
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        default_depth: int = DEFAULT_DEPTH,
    ) -> None:
        # Engine.__init__ opens a local docstore and retrievers; a router holds none of them.
        self.path = path
        self.manifest = manifest
        self.shards = shards
        self.retrievers = retrievers
        self.encoders = encoders
        self.deadline_s = deadline_s
        self.default_depth = default_depth
        self._local = threading.local()

    @classmethod
    def connect(
        cls,
        index_dir: str | Path,
        *,
        address: str,
        replicas: int = 1,
        actor_cpus: float = 0.25,
        deadline_s: float = DEFAULT_DEADLINE_S,
        query_backend: str = "onnx",
        threads: int = 3,
        load_timeout_s: float = 300.0,
    ) -> ShardedEngine:
        """Join the cluster, start the shard actors and wait until each has loaded its shard."""
        from trident_search.cluster.runtime import connect
        from trident_search.indexers.manifest import Manifest, ManifestError

        path = Path(index_dir).resolve()
        try:
            manifest = ShardedManifest.load(path)
            first = Manifest.load(manifest.shard_dirs(path)[0])
        except ManifestError as exc:
            raise IndexLoadError(str(exc)) from None
        connect(address)
        shards = ShardSet(path, manifest, replicas=replicas, actor_cpus=actor_cpus,
                          query_backend=query_backend, threads=threads)
        shards.wait_ready(load_timeout_s)
        log.info("serving %s: %d documents in %d shards x %d replicas", path, manifest.doc_count,
                 manifest.n_shards, replicas)
        encoders = query_encoders(first, query_backend)
        return cls(path, manifest, shards, list(first.retrievers), encoders, deadline_s=deadline_s)

    def close(self) -> None:
        self.shards.close()

    # -- search ---------------------------------------------------------------------------------
    def search(self, request: SearchRequest) -> SearchResponse:
        self._local.deadline = time.monotonic() + self.deadline_s
        self._local.missing = set()
        response = super().search(request)
        missing = sorted(self._local.missing)
        return response.model_copy(update={
            "partial": bool(missing),
            "missing_shards": [self.shards.names[s] for s in missing],
        })

    def _mask(self, filters: dict[str, Any]) -> Any:
        """Filters stay a dict here: each shard turns them into a mask over its own documents."""
        return filters

    def retrieve(
        self,
        query: str,
        retrievers: Sequence[Retriever],
        depths: dict[Retriever, int],
        allowed: Any = None,
        *,
        exact: bool = False,
        tuning: dict[Retriever, dict[str, Any]] | None = None,
    ) -> dict[Retriever, RetrieverRun]:
        """Scatter to every shard, gather each one's per-retriever top depth, merge by raw score.

        ``allowed`` is the request's filter dict (see :meth:`_mask`), applied inside each shard;
        ``tuning`` (per-request index knobs) goes to every shard as it is.
        """
        names = list(retrievers)
        vectors: dict[Retriever, Any] = {}
        timings: dict[Retriever, dict[str, float]] = {r: {} for r in names}
        for r in names:
            if r in self.encoders:  # once here, not once per shard
                start = time.perf_counter()
                vectors[r] = self.encoders[r].encode_queries([query])
                timings[r][f"encode_{r}"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        args = {s: (query, names, depths, allowed, exact, vectors, tuning) for s in range(self.shards.n)}
        answers, missing = self.shards.call("retrieve", args, self._local.deadline)
        self._local.missing.update(missing)
        timings[names[0]]["scatter"] = (time.perf_counter() - start) * 1e3
        runs = merge_runs(list(answers.values()), names, depths)
        return {r: RetrieverRun(run.hits, {**run.timings, **timings[r]}, run.warning) for r, run in runs.items()}

    def _hydrate(self, page: list[Any], request: SearchRequest) -> list[SearchHit]:
        owners: dict[int, list[str]] = {}
        for f in page:
            owners.setdefault(shard_of(f.docid, self.shards.n), []).append(f.docid)
        args = {s: (ids,) for s, ids in owners.items()}
        answers, missing = self.shards.call("fetch", args, max(self._local.deadline, time.monotonic() + 0.5))
        self._local.missing.update(missing)
        docs = {d[0]: d for rows in answers.values() for d in rows}
        out = []
        for rank, f in enumerate(page, start=request.offset + 1):
            _, title, text, metadata = docs.get(f.docid, (f.docid, "", None, {}))
            explain = None
            if request.explain:
                explain = {
                    name: RetrieverExplanation(rank=c.rank, raw_score=c.raw,
                                               normalized_score=c.normalized, weighted_score=c.weighted)
                    for name, c in f.contributions.items()
                }
            out.append(SearchHit(id=f.docid, rank=rank, score=f.score, title=title,
                                 text=text if request.include_text else None, metadata=metadata,
                                 explain=explain))
        return out

    # -- documents and info ---------------------------------------------------------------------
    def document(self, doc_id: str) -> DocumentResponse:
        shard = shard_of(doc_id, self.shards.n)
        answers, missing = self.shards.call("document", {shard: (doc_id,)}, time.monotonic() + self.deadline_s)
        if missing:
            raise NotReadyError(f"shard {self.shards.names[shard]}, which holds {doc_id!r}, did not "
                                f"answer within {self.deadline_s} s; retry shortly")
        if answers[shard] is None:
            raise NotFoundError(f"no document with id {doc_id!r} in this index", field="doc_id")
        _, title, text, metadata = answers[shard]
        return DocumentResponse(id=doc_id, title=title, text=text, metadata=metadata)

    def info(self) -> IndexInfo:
        return IndexInfo(
            path=str(self.path), doc_count=self.manifest.doc_count, retrievers=self.retrievers,
            default_fusion=self.default_fusion(),
            query_encoders={r: f"{e.name} ({getattr(e, 'backend', 'torch')}, in the router)"
                            for r, e in self.encoders.items()},
            manifest=self.manifest.to_dict(),
        )


def query_encoders(manifest: Any, backend: str) -> dict[Retriever, Any]:
    """The index's query encoders, as ``Engine.load`` makes them, for the router to encode once."""
    common = dict(device="cpu", max_length=int(manifest.params.get("max_length", 256)), threads=1,
                  backend=backend)
    out: dict[Retriever, Any] = {}
    if "sparse" in manifest.retrievers:
        from trident_search.encoders.sparse import SparseEncoder

        out["sparse"] = SparseEncoder(manifest.models["sparse"]["name"], **common)
    if "dense" in manifest.retrievers:
        from trident_search.encoders.dense import DenseEncoder

        out["dense"] = DenseEncoder(manifest.models["dense"]["name"], **common)
    return out


def merge_runs(
    answers: Sequence[dict[Retriever, WireRun]], names: Sequence[Retriever], depths: dict[Retriever, int]
) -> dict[Retriever, RetrieverRun]:
    """Per retriever, the global top ``depth`` of the shards' lists by raw score (ties by docid).

    Each shard's list is its exact top ``depth``, so the global top ``depth`` is among their union.
    Timings are the slowest shard's per stage (shards run in parallel).
    """
    out: dict[Retriever, RetrieverRun] = {}
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


def sharded_loader(address: str, **options: Any) -> Callable[[Any], ShardedEngine]:
    """An ``EngineLoader`` for ``trident_search.service.app.create_app`` that serves a sharded index over Ray."""

    def load(settings: Any) -> ShardedEngine:
        return ShardedEngine.connect(settings.index, address=address, query_backend=settings.query_backend,
                                     threads=settings.search_threads, **options)

    return load


# -- HTTP ------------------------------------------------------------------------------------------
ADDRESS_ENV = "TRIDENT_RAY_ADDRESS"
REPLICAS_ENV = "TRIDENT_SHARD_REPLICAS"
DEADLINE_ENV = "TRIDENT_SHARD_DEADLINE_S"


def create_sharded_app() -> Any:
    """uvicorn factory: the usual app (``trident_search.service.app.create_app``) with the sharded engine behind it.

    Options travel by environment, as for ``trident serve``, so every uvicorn worker reads the same.
    """
    import os

    from trident_search.service.app import create_app
    from trident_search.service.config import Settings

    loader = sharded_loader(
        os.environ.get(ADDRESS_ENV, "auto"),
        replicas=int(os.environ.get(REPLICAS_ENV, "1")),
        deadline_s=float(os.environ.get(DEADLINE_ENV, str(DEFAULT_DEADLINE_S))),
    )
    return create_app(Settings(), loader=loader)


def serve_sharded(
    index: Path, *, address: str, host: str, port: int, replicas: int = 1,
    deadline_s: float = DEFAULT_DEADLINE_S, workers: int = 1, query_backend: str = "onnx",
) -> None:
    """Run the HTTP server as the Ray driver of a sharded index (``trident serve --ray-address``)."""
    import os

    import uvicorn

    from trident_search.cluster.layout import is_sharded

    if not is_sharded(index):
        raise IndexLoadError(f"{index} is not a sharded index (build one with `trident index build "
                             "--shards N --ray-address ...`), or serve it without --ray-address")
    if address == "local" and workers > 1:
        raise IndexLoadError("--ray-address local starts a private Ray per process; with --workers > 1 "
                             "start a cluster first (`ray start --head`) and pass --ray-address auto")
    os.environ.update({
        "TRIDENT_INDEX": str(index), "TRIDENT_QUERY_BACKEND": query_backend, ADDRESS_ENV: address,
        REPLICAS_ENV: str(replicas), DEADLINE_ENV: str(deadline_s),
    })
    uvicorn.run("trident_search.cluster.serving:create_sharded_app", factory=True, host=host, port=port, workers=workers,
                log_level=os.environ.get("TRIDENT_LOG_LEVEL", "info"))
