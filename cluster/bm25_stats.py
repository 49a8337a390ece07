"""Global BM25 statistics for a sharded index: gathered from every shard, handed to every replica.

Each shard's Lucene knows document frequencies and lengths only for its own documents; BM25 then
scores the same document differently in a shard than in the single-node index. Here the router asks
one replica of every shard for its statistics (one part each,
``trident_search.indexers.bm25.BM25Index.local_stats``), combines them into one
:class:`~trident_search.indexers.bm25.GlobalStats` (framing only: the router needs no JVM), and
hands that to every replica of every shard, whose searcher then scores as the single-node index
does (``docs/scaling.md``).

Call :func:`refresh_bm25_stats` again whenever shards change (documents written, a shard rebuilt
or added): the statistics describe the shards at the moment they were gathered. The last statistics
set are also kept in a small named actor, so a replica that Ray restarts (``max_restarts=-1``) takes
them up while it loads (:func:`restore_bm25_stats`) instead of serving with its own.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from trident_search.indexers.bm25 import GlobalStats

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
HOLDER_NAME = "trident-bm25-stats"


class _StatsHolder:
    """The statistics last set, by sharded index path (a named Ray actor of the router's job)."""

    def __init__(self) -> None:
        self.stats: dict[str, GlobalStats | None] = {}

    def put(self, key: str, stats: GlobalStats | None) -> None:
        self.stats[key] = stats

    def get(self, key: str) -> GlobalStats | None:
        return self.stats.get(key)


def shard_bm25(index: Any) -> Any | None:
    """The BM25 part of a shard (a LocalIndex: its ``parts["bm25"]``), or None."""
    parts = getattr(index, "parts", None)
    if isinstance(parts, dict) and parts.get("bm25") is not None:
        return parts["bm25"]
    return getattr(index, "bm25", None)


def global_bm25_stats(shards: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> GlobalStats | None:
    """The statistics of every shard of ``shards`` (a ``ShardSet``); None when it serves no BM25.

    Every shard must answer (one replica each, others tried on failure): statistics that miss a
    shard would be wrong for all of them, so a missing shard raises ``IndexLoadError``.
    """
    from trident_search.errors import IndexLoadError

    answers, missing = shards.call("bm25_stats", {s: () for s in range(shards.n)}, time.monotonic() + timeout_s)
    if missing:
        raise IndexLoadError(f"shards {[shards.names[s] for s in missing]} gave no BM25 statistics within "
                             f"{timeout_s:.0f} s; global BM25 statistics need every shard")
    parts = [answers[s] for s in range(shards.n)]
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise IndexLoadError("some shards have a BM25 index and some do not; rebuild the index")
    return GlobalStats.of(parts)


def set_bm25_stats(shards: Any, index_dir: str | Path, stats: GlobalStats | None, *,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Hand ``stats`` to every replica of every shard of the sharded index at ``index_dir`` (None:
    back to per-shard statistics), and keep them for replicas that restart."""
    ray = shards.ray
    ref = ray.put(stats)
    holder = ray.remote(_StatsHolder).options(name=HOLDER_NAME, get_if_exists=True, num_cpus=0).remote()
    ray.get(holder.put.remote(_key(index_dir), ref), timeout=timeout_s)  # first: restarts see it
    ray.get([r.handle.set_bm25_stats.remote(ref) for reps in shards.replicas for r in reps], timeout=timeout_s)


def restore_bm25_stats(index: Any, shard_dir: str | Path) -> None:
    """In a shard actor that is loading: take up the statistics last set for its index, if any
    (a replica restarted by Ray). Without a holder (first start) the router sets them after load."""
    import ray

    part = shard_bm25(index)
    if part is None:
        return
    try:
        holder = ray.get_actor(HOLDER_NAME)
    except ValueError:
        return
    stats = ray.get(holder.get.remote(_key(Path(shard_dir).parent)), timeout=DEFAULT_TIMEOUT_S)
    if stats is not None:
        try:
            part.set_global_stats(stats)
        except ValueError as exc:  # the shard changed since: the router's next refresh fixes it
            log.warning("%s: the last global BM25 statistics do not fit this shard (%s); using its "
                        "own until they are gathered again", shard_dir, exc)


def _key(index_dir: str | Path) -> str:
    return str(Path(index_dir).resolve())


def refresh_bm25_stats(shards: Any, index_dir: str | Path, *,
                       timeout_s: float = DEFAULT_TIMEOUT_S) -> GlobalStats | None:
    """Gather the statistics of every shard and hand them to every replica; returns them.

    ``shards`` is the ``ShardSet`` serving the sharded index at ``index_dir``. Call it again after
    any shard changed."""
    start = time.perf_counter()
    stats = global_bm25_stats(shards, timeout_s=timeout_s)
    if stats is not None:
        set_bm25_stats(shards, index_dir, stats, timeout_s=timeout_s)
        log.info("global BM25 statistics of %d shards (%d bytes, %s) set on every replica in %.2f s",
                 stats.n_parts, sum(map(len, stats.parts)), stats.fingerprint, time.perf_counter() - start)
    return stats
