"""Live writes to an opened index: upserts and deletes, durable before they are acknowledged and
visible in every retriever without a rebuild.

A write goes through four steps, the first two outside the write lock (searches and other
writes' encodings run meanwhile):

1. **Validate** every document like a corpus line (``indexers.corpus.Document``); a bad item is an
   :class:`~trident_search.errors.InvalidRequestError` naming its index, and nothing is applied.
2. **Encode** with each retriever's :meth:`~trident_search.indexers.retriever.Retriever.live_encoder`
   (the build's document encoder with the manifest's parameters).
3. **Log** (under the write lock): one SQLite transaction in the docstore's database
   (:class:`~trident_search.indexers.docstore.WriteLog`, ``synchronous=FULL``) inserts the documents
   under fresh internal ids, tombstones the replaced and deleted ones and appends log entries
   carrying the encodings. Once it commits, the write survives ``kill -9``.
4. **Apply** the entries to every part (:meth:`Part.add`/:meth:`Part.delete`), refresh them, then
   publish the new id array and live mask in :class:`~trident_search.core.local.LocalIndex` in one
   reference swap. The write is visible when :meth:`LiveWriter.write` returns (so
   ``refresh=wait_for`` holds for every write, and the refresh interval is 0).

On open, each part replays the log entries after the sequence number it absorbed
(:meth:`Part.absorbed`: BM25 keeps writes in its Lucene commits, dense and sparse in memory, so they
replay from the log's stored encodings without a model).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from trident_search.errors import InvalidRequestError, NotFoundError
from trident_search.indexers.checkpoint import fsync_dir
from trident_search.indexers.corpus import Document
from trident_search.indexers.docstore import LogEntry, WriteLog
from trident_search.indexers.retriever import DocumentEncoder, Part, WritesUnsupportedError, get

if TYPE_CHECKING:
    from trident_search.core.local import LocalIndex

log = logging.getLogger(__name__)

WRITE_DEVICE_ENV = "TRIDENT_WRITE_DEVICE"
"""Device of the document encoders of live writes (cpu, cuda, cuda:N); default cpu."""
MERGE_DELTA_MIN = 10_000
MERGE_DELTA_FRACTION = 0.1
"""A merge starts when a delta holds more than max(MERGE_DELTA_MIN, MERGE_DELTA_FRACTION x documents) rows..."""
MERGE_DELETED_FRACTION = 0.2
"""...or more than this fraction of internal ids is deleted."""
COMMIT_EVERY = 1000
"""Log entries after which the parts that keep writes in their own files (BM25) commit, bounding replay."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one acknowledged write did: the log sequence numbers it took, and the counts."""

    first_seq: int
    last_seq: int
    upserted: int
    deleted: int
    created: int  # upserts of ids that were not in the index

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.last_seq, "upserted": self.upserted, "created": self.created,
                "deleted": self.deleted, "visible": True}


def validate(items: Sequence[Any]) -> list[Document]:
    """Request items validated exactly like corpus lines (``indexers.corpus``), plus: no id twice in
    one request, no id the docstore reserves for tombstones. The first bad item raises, naming its index."""
    from trident_search.indexers.corpus import _parse
    from trident_search.indexers.docstore import DELETED_PREFIX

    docs: list[Document] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"documents[{i}]"
        try:
            doc = _parse(json.dumps(item, ensure_ascii=False))
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"{where}: {exc}", field=where) from None
        if doc.id.startswith(DELETED_PREFIX):
            raise InvalidRequestError(f"{where}: '_id' may not start with NUL", field=where)
        if doc.id in seen:
            raise InvalidRequestError(f"{where}: '_id' {doc.id!r} appears twice in this request", field=where)
        seen.add(doc.id)
        docs.append(doc)
    return docs


class LiveWriter:
    """The one writer of an opened :class:`LocalIndex` (see the module docstring)."""

    def __init__(self, index: LocalIndex) -> None:
        for name, part in index.parts.items():
            if type(part).add is Part.add:
                raise WritesUnsupportedError(f"this index's {name} retriever does not take writes; rebuild it")
        self.index = index
        self.log = WriteLog(index.docstore)
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._encoders: dict[str, DocumentEncoder | None] | None = None
        self._committed = max((p.absorbed() for p in index.parts.values()), default=0)
        self.last_merge: float | None = None
        self.merges = 0
        self._merging: threading.Thread | None = None
        self._merge_lock = threading.Lock()

    # -- opening ----------------------------------------------------------------------------------
    def replay(self) -> int:
        """Give every part the log entries it had not absorbed; returns how many entries ran."""
        ran = 0
        with self._lock:
            for name, part in self.index.parts.items():
                generation = self.log.get_state(f"generation:{name}")
                if generation:
                    folder, _, gen_seq = generation.rpartition(":")
                    part.open_generation(self.index.path / folder, int(gen_seq))
                entries = self.log.since(part.absorbed())
                if entries:
                    log.info("%s: replaying %d logged writes", name, len(entries))
                    self._apply_part(name, part, entries, self._docs_of(entries), None)
                    part.refresh()
                ran = max(ran, len(entries))
            self.index.publish(self.log.deleted())
        return ran

    def _docs_of(self, entries: Sequence[LogEntry]) -> dict[int, Document]:
        ids = [_iid(e) for e in entries if e.op == "upsert"]
        stored = self.index.docstore.get(ids) if ids else []
        by_id = {_iid(e): e.ext_id for e in entries if e.op == "upsert"}
        return {s.internal_id: Document(by_id[s.internal_id], s.title, s.text, s.metadata) for s in stored}

    # -- writing ----------------------------------------------------------------------------------
    def encoders(self) -> dict[str, DocumentEncoder | None]:
        with self._encode_lock:
            if self._encoders is None:
                manifest = self.index.manifest
                device = os.environ.get(WRITE_DEVICE_ENV, "").strip() or "cpu"
                self._encoders = {n: get(n).live_encoder(manifest, device=device) for n in self.index.parts}
            return self._encoders

    def encode(self, docs: Sequence[Document]) -> dict[str, Any]:
        """Each retriever's encodings of ``docs`` (one chunk per retriever; None for text-only ones)."""
        if not docs:
            return {}
        return {n: (enc.encode(docs) if enc is not None else None) for n, enc in self.encoders().items()}

    def write(self, upserts: Sequence[Document] = (), deletes: Sequence[str] = ()) -> WriteResult:
        """Encode, log durably, apply and publish one request's writes (all or nothing)."""
        upserts, deletes = list(upserts), list(deletes)
        encoded = self.encode(upserts)
        payloads = [_payload({n: _row(c, i) for n, c in encoded.items() if c is not None})
                    for i in range(len(upserts))]
        with self._lock:
            try:
                entries = self.log.apply(list(zip(upserts, payloads, strict=True)), deletes)
            except KeyError as exc:
                raise NotFoundError(f"no document with id {exc.args[0]!r} in this index", field="doc_id") from None
            docs = {_iid(e): d for e, d in zip((e for e in entries if e.op == "upsert"), upserts, strict=True)}
            for name, part in self.index.parts.items():
                self._apply_part(name, part, entries, docs, encoded.get(name))
                part.refresh()
            self.index.publish(self.log.deleted())
            if entries and entries[-1].seq - self._committed >= COMMIT_EVERY:
                self._commit(entries[-1].seq)
        self.maybe_merge()
        created = sum(1 for e in entries if e.op == "upsert" and e.old_id is None)
        return WriteResult(entries[0].seq if entries else 0, entries[-1].seq if entries else 0,
                           len(upserts), len(deletes), created)

    def _apply_part(self, name: str, part: Any, entries: Sequence[LogEntry], docs: dict[int, Document],
                    encoded: Any) -> None:
        """Entries in order; consecutive upserts go to the part as one batch."""
        batch: list[LogEntry] = []

        def flush() -> None:
            if not batch:
                return
            ids = np.array([e.internal_id for e in batch], dtype=np.int64)
            if encoded is not None:  # this request's encodings, rows in entry order
                rows = encoded
            else:  # replay: the encodings the log stored
                rows = _stack([pickle.loads(_logged(e)).get(name) for e in batch]) if batch[0].payload else None
            part.add(ids, [docs[int(i)] for i in ids], rows)
            batch.clear()

        for e in entries:
            if e.op == "upsert":
                batch.append(e)
            else:
                flush()
                part.delete(np.array([e.old_id], dtype=np.int64), [e.ext_id])
        flush()

    # -- persistence ------------------------------------------------------------------------------
    def _commit(self, seq: int) -> None:
        for part in self.index.parts.values():
            part.commit(seq)
        self._committed = seq

    def merge(self) -> dict[str, Any]:
        """Fold the log into every part: BM25 expunges deletions (exact statistics) and commits in
        place; sparse rebuilds its block summaries over every row, dense saves its vectors, each
        into a new generation folder ``<index>/<name>.gen-<seq>`` published atomically (rename,
        then the pointer in the log's state table, one SQLite commit). Searches keep running on
        the previous state until the swap; writes wait. A merge that fails leaves the previous
        generation serving (its half-written folder is removed) and the next one retries."""
        start = time.perf_counter()
        with self._lock:
            seq = self.log.last_seq()
            ext, live, _ = self.index.view
            resolve = _resolver(ext, live)
            done: dict[str, str] = {}
            for name, part in self.index.parts.items():
                final = self.index.path / f"{name}.gen-{seq}"
                tmp = final.with_name(final.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    written = part.merge(seq, live=live, resolve=resolve, folder=tmp, manifest=self.index.manifest)
                    if written is None:
                        done[name] = "in place"
                        continue
                    _fsync_tree(tmp)
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
                    fsync_dir(final.parent)
                    previous = self.log.get_state(f"generation:{name}")
                    self.log.set_state(f"generation:{name}", f"{final.name}:{seq}")  # the publish point
                    part.open_generation(final, seq)
                    if previous and previous.split(":")[0] != final.name:
                        shutil.rmtree(self.index.path / previous.split(":")[0], ignore_errors=True)
                    done[name] = final.name
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            self._committed = seq
            self.last_merge = time.time()
            self.merges += 1
        return {"seq": seq, "seconds": round(time.perf_counter() - start, 3), "parts": done}

    def maybe_merge(self) -> None:
        """Start a background merge when the delta or the deleted fraction passed its threshold."""
        st = self.stats()
        n = max(st["internal_ids"], 1)
        delta = max(st["delta"].values(), default=0)
        if not (delta > max(MERGE_DELTA_MIN, MERGE_DELTA_FRACTION * n)
                or st["deleted_documents"] > MERGE_DELETED_FRACTION * n):
            return
        with self._merge_lock:
            if self._merging is not None and self._merging.is_alive():
                return

            def run() -> None:
                try:
                    self.merge()
                except Exception:  # the previous generation keeps serving; the next write retries
                    log.exception("background merge failed; retried after the next write")

            self._merging = threading.Thread(target=run, name="trident-merge", daemon=True)
            self._merging.start()

    def stats(self) -> dict[str, Any]:
        ext, live, n = self.index.view
        deleted = 0 if live is None else int(n - live.sum())
        delta = {name: p.delta_size() for name, p in self.index.parts.items() if hasattr(p, "delta_size")}
        return {"seq": self.log.last_seq(), "committed_seq": self._committed, "internal_ids": n,
                "live_documents": n - deleted, "deleted_documents": deleted, "delta": delta,
                "last_merge": self.last_merge, "merges": self.merges,
                "generations": {n: (self.log.get_state(f"generation:{n}") or "build").split(":")[0]
                                for n in self.index.parts}}

    def close(self) -> None:
        """Commit what the parts hold in their own files (replay then starts after it), close the log."""
        with self._lock:
            seq = self.log.last_seq()
            if seq > self._committed:
                try:
                    self._commit(seq)
                except Exception:  # the log still has every write: the next open replays them
                    log.exception("could not commit live writes at close; they will be replayed")
            self.log.close()


def _resolver(ext: np.ndarray, live: np.ndarray | None) -> Any:
    """External ids -> current internal ids (-1 when absent), by binary search over live ids."""
    ids = np.arange(ext.size) if live is None else np.flatnonzero(live)
    keys = ext[ids].astype(str)
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]

    def resolve(wanted: Sequence[str]) -> np.ndarray:
        w = np.asarray(list(wanted), dtype=str)
        if not keys.size:
            return np.full(w.size, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(keys, w), 0, keys.size - 1)
        return np.where(keys[pos] == w, ids[pos], -1).astype(np.int64)

    return resolve


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(root)




def _payload(encodings: dict[str, Any]) -> bytes:
    return pickle.dumps(encodings, protocol=5)


def _row(chunk: Any, i: int) -> Any:
    return chunk[i : i + 1] if sp.issparse(chunk) else np.asarray(chunk[i])


def _stack(rows: list[Any]) -> Any:
    if any(r is None for r in rows):
        return None
    return sp.vstack(rows, format="csr") if sp.issparse(rows[0]) else np.stack(rows)


def _iid(entry: LogEntry) -> int:
    """An upsert's internal id (the log assigns one to every upsert)."""
    if entry.internal_id is None:
        raise ValueError(f"log entry {entry.seq} ({entry.op} {entry.ext_id!r}) has no internal id")
    return entry.internal_id


def _logged(entry: LogEntry) -> bytes:
    if entry.payload is None:
        raise ValueError(f"log entry {entry.seq} ({entry.op} {entry.ext_id!r}) carries no encodings")
    return entry.payload
