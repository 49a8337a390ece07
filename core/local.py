"""One index directory opened in this process: the retrieval backend and document source of a
single-node :class:`~trident_search.core.engine.Engine`, and of each shard server in ``cluster/``.

Retrievers come from the registry (``trident_search.indexers.retriever``); each answers in internal
ids, which this module maps to external ids once, so fusion and users only ever see corpus ids.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trident_search.errors import IndexLoadError, TridentError
from trident_search.indexers import filters as filters_mod
from trident_search.indexers.docstore import DocStore, StoredDoc, has_live_log, live_external_ids
from trident_search.indexers.hits import Hit
from trident_search.indexers.manifest import Manifest
from trident_search.indexers.retriever import (
    Part,
    QueryEncoder,
    Results,
    RetrieverOptions,
    WritesUnsupportedError,
    get,
)

if TYPE_CHECKING:
    from trident_search.core.live import LiveWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetrieverCall:
    """What one retriever is asked for in one search."""

    depth: int
    options: RetrieverOptions


@dataclass(frozen=True, slots=True)
class RetrieverRun:
    """One retriever's hits (external ids, best first) and how long its stages took (ms)."""

    hits: list[Hit]
    timings: dict[str, float]
    warning: str | None = None


@dataclass(slots=True)
class Retrieved:
    """Every run of one search, the shared stages' timings, and (sharded) what did not answer."""

    runs: dict[str, RetrieverRun]
    timings: dict[str, float] = field(default_factory=dict)
    missing_shards: list[str] = field(default_factory=list)


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class LocalIndex:
    """An opened index directory: docstore, one part and one query encoder per retriever.

    Thread-safe: the retrievers of one query run concurrently on a small pool (Lucene, FAISS, ONNX
    Runtime and the numba kernels release the GIL), so hybrid latency is close to the slowest
    retriever's rather than the sum.
    """

    def __init__(self, path: Path, manifest: Manifest, docstore: DocStore, parts: dict[str, Part],
                 encoders: dict[str, QueryEncoder], *, threads: int = 3) -> None:
        self.path = path
        self.manifest = manifest
        self.docstore = docstore
        self.parts = parts
        self.encoders = encoders
        self.retrievers = list(parts)
        self.external_ids = live_external_ids(docstore)
        # Live writes (core/live.py): what searches see, swapped as one tuple when a write is
        # published: the external id of every internal id, the live mask (None: nothing deleted)
        # and the number of internal ids.
        self.view: tuple[np.ndarray, np.ndarray | None, int] = (self.external_ids, None, len(self.external_ids))
        self.live: LiveWriter | None = None
        self._live_lock = threading.Lock()
        self._lock_fd = _hold_shared(path)
        # The calling thread runs one retriever itself, so the pool needs one thread fewer.
        self._pool = ThreadPoolExecutor(max(1, threads - 1), thread_name_prefix="trident-retriever")

    @classmethod
    def open(cls, index_dir: str | Path, *, query_backend: str = "onnx", threads: int = 3,
             retrievers: Sequence[str] | None = None) -> LocalIndex:
        """Open a directory written by ``trident index build``; :class:`IndexLoadError` says what is wrong."""
        path = Path(index_dir)
        if not path.is_dir():
            raise IndexLoadError(f"no index at {path}: the folder does not exist")
        manifest = Manifest.load(path)
        written = has_live_log(path / "docs.sqlite")
        check_files(path, _unwritten(manifest.files) if written else manifest.files)
        wanted = list(manifest.retrievers if retrievers is None else retrievers)
        missing = [r for r in wanted if r not in manifest.retrievers]
        if missing:
            raise IndexLoadError(f"index {path} has no {', '.join(missing)} retriever (it has "
                                 f"{', '.join(manifest.retrievers)})")
        docstore = DocStore.open(path / "docs.sqlite")
        external = live_external_ids(docstore) if written else docstore.external_ids()
        parts: dict[str, Part] = {}
        encoders: dict[str, QueryEncoder] = {}
        try:
            for name in wanted:
                spec = get(name)
                parts[name] = spec.open(path / name, manifest, external_ids=external)
                encoders[name] = spec.query_encoder(manifest, backend=query_backend)
                _check_revision(name, encoders[name], manifest)
        except BaseException as exc:
            for part in parts.values():
                part.close()
            docstore.close()
            if isinstance(exc, TridentError):
                raise
            if isinstance(exc, Exception):  # each part raises its own error; name the index and the fix
                raise IndexLoadError(f"cannot load {path}: {exc}") from exc
            raise
        log.info("opened %s: %d documents, retrievers %s, query backend %s", path, manifest.doc_count,
                 ", ".join(parts), query_backend)
        try:
            index = cls(path, manifest, docstore, parts, encoders, threads=threads)
        except BaseException:
            for part in parts.values():
                part.close()
            docstore.close()
            raise
        if written:  # replay the logged writes the parts had not absorbed
            try:
                index.writer().replay()
            except BaseException:
                index.close()
                raise
        return index

    # -- live writes (core/live.py) ----------------------------------------------------------------
    def writer(self) -> LiveWriter:
        """The index's one :class:`LiveWriter`, made on first use (WritesUnsupportedError if a part
        cannot take writes or the folder is read-only)."""
        with self._live_lock:
            if self.live is None:
                from trident_search.core.live import LiveWriter
                from trident_search.indexers.docstore import DocStoreError

                if self._lock_fd is None:
                    raise WritesUnsupportedError(f"{self.path} is not writable: this index cannot take writes")
                try:  # the one writer: no other process may have the index open meanwhile
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise WritesUnsupportedError(
                        f"another process has {self.path} open (a server, a server's other workers, or "
                        "`trident index add`): writes need the only process holding the index") from None
                try:
                    self.live = LiveWriter(self)
                except DocStoreError as exc:
                    raise WritesUnsupportedError(str(exc)) from None
            return self.live

    def publish(self, deleted: np.ndarray) -> None:
        """Make the written documents searchable: the new id array and live mask, in one swap."""
        self.docstore._external_ids = None
        ext = live_external_ids(self.docstore)
        live = None
        if deleted.size:
            live = np.ones(len(ext), dtype=bool)
            live[deleted] = False
        self.view = (ext, live, len(ext))
        self.external_ids = ext

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.live is not None:
            self.live.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
        for part in self.parts.values():
            part.close()
        for enc in self.encoders.values():
            enc.close()
        self.docstore.close()

    # -- retrieval --------------------------------------------------------------------------------
    def mask(self, filters: Mapping[str, Any], view: tuple[np.ndarray, np.ndarray | None, int] | None = None,
             ) -> np.ndarray | None:
        """The filters (and deletes) as a bool mask over internal ids (None when every document passes)."""
        _, live, n = view or self.view
        if not filters:
            return live
        mask = self.docstore.matching(dict(filters))[:n]  # a FilterError names the path of a bad part
        if live is not None:
            mask &= live
        # A filter every document passes costs nothing downstream.
        return None if mask.all() else mask

    def encode(self, query: str, names: Sequence[str]) -> dict[str, Any]:
        """Query encodings for ``names`` (the sharded router encodes once for every shard)."""
        return {name: self.encoders[name].encode(query) for name in names}

    def retrieve(self, query: str, calls: Mapping[str, RetrieverCall], filters: Mapping[str, Any],
                 *, vectors: Mapping[str, Any] | None = None) -> Retrieved:
        """Run the retrievers concurrently; each returns its top ``depth`` allowed documents.

        ``vectors`` are encodings made by the caller; retrievers without one encode the query here.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        view = self.view
        allowed = self.mask(filters, view)
        if filters:
            timings["filter"] = ms_since(start)
        given = vectors or {}
        # A part that drops deleted documents itself needs no mask when there is no filter.
        masks = {n: None if not filters and self.parts[n].applies_deletes else allowed for n in calls}
        tasks: dict[str, Callable[[], RetrieverRun]] = {
            name: partial(self._run_one, name, query, calls[name], masks[name], given.get(name), view[0])
            for name in calls
        }
        names = list(tasks)
        futures: dict[str, Future[RetrieverRun]] = {n: self._pool.submit(tasks[n]) for n in names[1:]}
        runs = {names[0]: tasks[names[0]]()} if names else {}
        for n, fut in futures.items():
            runs[n] = fut.result()
        return Retrieved({n: runs[n] for n in names}, timings)

    def _run_one(self, name: str, query: str, call: RetrieverCall, allowed: np.ndarray | None,
                 encoded: Any, external_ids: np.ndarray | None = None) -> RetrieverRun:
        timings: dict[str, float] = {}
        if encoded is None:
            start = time.perf_counter()
            encoded = self.encoders[name].encode(query)
            timings[f"encode_{name}"] = ms_since(start)
        start = time.perf_counter()
        res = self.parts[name].search(encoded, call.depth, allowed=allowed, options=call.options)
        timings[name] = ms_since(start)
        external = self.external_ids if external_ids is None else external_ids
        ids = res.ids
        if ids.size and int(ids.max()) >= external.size:  # written, not yet published
            ids, keep = ids[ids < external.size], ids < external.size
            res = Results(ids, res.scores[keep], res.warning)
        ext = external[ids]
        hits = [Hit(str(d), float(s)) for d, s in zip(ext, res.scores.tolist(), strict=True)]
        return RetrieverRun(hits, timings, res.warning)

    # -- documents ----------------------------------------------------------------------------------
    def fetch(self, ids: Sequence[str]) -> list[StoredDoc]:
        """Stored documents for external ids, in order."""
        return self.docstore.get(self.docstore.internal_ids(list(ids))) if ids else []

    def document(self, doc_id: str) -> StoredDoc | None:
        return self.docstore.get_by_external(doc_id)

    def field_values(self, ids: Sequence[str], field: str) -> list[Any]:
        """Each document's (first) value of a metadata field, None where it has none."""
        return self.docstore.field_values(self.docstore.internal_ids(list(ids)), field) if ids else []

    def facets(self, filters: Mapping[str, Any], requests: Sequence[Any],
               candidates: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per facet: top values counted over the documents matching ``filters`` and over the
        ``candidates``, and per range the same two counts (see ``core.schemas.FacetRequest``)."""
        allowed = self.mask(filters)
        cand = np.zeros(self.docstore.columns.n, dtype=bool)
        ids = self.docstore.internal_ids(list(candidates)) if candidates else np.zeros(0, dtype=np.int64)
        cand[ids[ids >= 0]] = True
        out: dict[str, dict[str, Any]] = {}
        for req in requests:
            col = self.docstore.columns.column(req.field)
            if req.ranges:
                buckets = []
                for r in req.ranges:
                    b = r.bounds()
                    buckets.append({"key": r.key or _range_key(b), **b,
                                    "count": filters_mod.range_count(col, b, allowed),
                                    "candidates": filters_mod.range_count(col, b, cand)})
                out[req.field] = {"values": [], "ranges": buckets}
                continue
            top = filters_mod.value_counts(col, allowed, req.size)
            in_cand = {(type(v) is bool, v): c for v, c in filters_mod.value_counts(col, cand, 10**9)}
            out[req.field] = {"values": [
                {"value": v, "count": c, "candidates": in_cand.get((type(v) is bool, v), 0)} for v, c in top]}
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "doc_count": self.manifest.doc_count if self.live is None else self.live.stats()["live_documents"],
            "live": None if self.live is None else self.live.stats(),
            "query_encoders": {n: e.description for n, e in self.encoders.items()},
            "manifest": self.manifest.to_dict(),
        }


def _range_key(bounds: Mapping[str, Any]) -> str:
    lo = next((f"{'(' if op == 'gt' else '['}{v}" for op, v in bounds.items() if op in ("gt", "gte")), "(*")
    hi = next((f"{v}{')' if op == 'lt' else ']'}" for op, v in bounds.items() if op in ("lt", "lte")), "*)")
    return f"{lo}, {hi}"


def _check_revision(name: str, encoder: QueryEncoder, manifest: Manifest) -> None:
    built = manifest.models.get(name, {}).get("revision")
    revision = getattr(getattr(encoder, "encoder", None), "revision", None)
    if built and revision and revision != built:
        log.warning("%s query encoder is revision %s, the index was built with %s; rankings may suffer",
                    name, revision, built)


LOCK_FILE = ".trident.lock"


def _hold_shared(path: Path) -> int | None:
    """A shared lock on ``<index>/.trident.lock`` for as long as the index is open (None where the
    folder is read-only). A writer upgrades it to exclusive, so there is one writer and no reader
    in another process while it writes; the kernel releases it when the process dies (kill -9)."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise IndexLoadError(f"{path} is being written by another process (`trident index add`/`delete` "
                             "or a server taking writes); open it when that is done") from None
    return fd


def _unwritten(files: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The manifest's files that live writes leave as built: not the docstore, nor the folders of
    retrievers that write in place (``Retriever.writes_in_place``: BM25's Lucene segments)."""
    def kept(rel: str) -> bool:
        top = rel.split("/", 1)[0]
        if top.startswith("docs.sqlite"):
            return False
        try:
            return not getattr(get(top), "writes_in_place", False)
        except Exception:  # not a retriever's folder
            return True

    return {rel: meta for rel, meta in files.items() if kept(rel)}


def check_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    """Every file the manifest lists exists with its recorded size (checksums: `trident index info --verify`)."""
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            raise IndexLoadError(f"index {root} is incomplete: {rel} is missing; rebuild it")
        if p.stat().st_size != meta.get("size"):
            raise IndexLoadError(f"index {root} is damaged: {rel} has size {p.stat().st_size}, "
                                 f"manifest says {meta.get('size')}; rebuild it")
