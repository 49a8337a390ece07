"""The document store: internal id <-> external ``_id``, title, text and metadata, in SQLite.

One table keyed by internal id (the document's position in the corpus), written once by the build
and then only read. WAL mode lets many readers run beside each other; the service opens read-only
connections, one per thread, so a threaded server needs no lock. Metadata filters and facets run on
typed columns loaded from the metadata (``indexers/filters.py``) and come back as a bool mask over
internal ids, the form every retriever takes.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.errors import TridentError
from trident_search.indexers import filters as _filters
from trident_search.indexers.corpus import Document
from trident_search.indexers.filters import FilterError as FilterError  # re-exported

_SCHEMA = """
CREATE TABLE docs (
    id INTEGER PRIMARY KEY,
    ext_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
)
"""
_SQL_VARS = 500  # stay well under SQLite's bound-parameter limit
Scalar = str | int | float | bool


class DocStoreError(TridentError, ValueError):
    """A docstore that cannot be opened, or a lookup or filter it cannot answer."""


@dataclass(frozen=True, slots=True)
class StoredDoc:
    """A document as the docstore returns it, with its internal id."""

    internal_id: int
    id: str
    title: str
    text: str
    metadata: dict[str, Any]


class DocStore:
    """SQLite-backed document table; ``create`` for the build, ``open`` for everyone else."""

    def __init__(self, path: Path, *, readonly: bool, uri: str) -> None:
        self.path = path
        self.readonly = readonly
        self._uri = uri
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._external_ids: np.ndarray | None = None
        self._matching = lru_cache(maxsize=256)(self._matching_uncached)
        self.columns = _filters.Columns(self._conn, self.__len__)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path) -> DocStore:
        """A new, empty store (an existing file at ``path`` is an error, not overwritten)."""
        p = Path(path)
        if p.exists():
            raise DocStoreError(f"{p} already exists; remove it or choose another path")
        store = cls(p, readonly=False, uri=f"file:{p}")
        conn = store._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        conn.commit()
        return store

    @classmethod
    def open(cls, path: str | Path, readonly: bool = True) -> DocStore:
        """Open an existing store; read-only stores share nothing between threads.

        A read-only WAL database needs its ``-shm`` file; when the folder is not writable (a
        read-only mount) SQLite cannot create one, so the file is opened as immutable instead.
        """
        p = Path(path)
        if not p.is_file():
            raise DocStoreError(f"docstore not found: {p} (build an index with `trident index build`)")
        if not readonly:
            return cls(p, readonly=False, uri=f"file:{p}")
        mode = "ro" if os.access(p.parent, os.W_OK) else "ro&immutable=1"
        store = cls(p, readonly=True, uri=f"file:{p}?mode={mode}")
        try:
            store._conn().execute("SELECT count(*) FROM docs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DocStoreError(f"{p} is not a Trident docstore: {exc}") from None
        return store

    def _conn(self) -> sqlite3.Connection:
        if not self.readonly:
            if self._writer is None:
                self._writer = sqlite3.connect(self._uri, uri=True)
            return self._writer
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (and the writer), checkpointing the WAL into the file."""
        if self._writer is not None:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
            self._writer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------
    def add(self, docs: Iterable[Document], *, batch: int = 1000) -> int:
        """Append documents in order, numbering them from the current count; returns how many."""
        if self.readonly:
            raise DocStoreError(f"{self.path} is open read-only")
        conn = self._conn()
        next_id = len(self)
        added = 0
        rows: list[tuple[int, str, str, str, str]] = []
        for doc in docs:
            meta = json.dumps(doc.metadata, sort_keys=True, ensure_ascii=False)
            rows.append((next_id + added, doc.id, doc.title, doc.text, meta))
            added += 1
            if len(rows) >= batch:
                self._insert(conn, rows)
                rows = []
        if rows:
            self._insert(conn, rows)
        self._external_ids = None
        self.filters_changed()
        return added

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: list[tuple[int, str, str, str, str]]) -> None:
        try:
            with conn:
                conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as exc:
            raise DocStoreError(f"cannot add documents: {exc} (duplicate _id?)") from None

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM docs").fetchone()[0])

    def get(self, internal_ids: Sequence[int] | np.ndarray) -> list[StoredDoc]:
        """Documents in the order asked; an unknown internal id raises ``KeyError``."""
        wanted = [int(i) for i in internal_ids]
        found: dict[int, StoredDoc] = {}
        for start in range(0, len(wanted), _SQL_VARS):
            part = wanted[start : start + _SQL_VARS]
            marks = ",".join("?" * len(part))
            for row in self._conn().execute(
                f"SELECT id, ext_id, title, text, metadata FROM docs WHERE id IN ({marks})", part
            ):
                found[row[0]] = _stored(row)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"unknown internal ids: {missing[:10]}")
        return [found[i] for i in wanted]

    def get_by_external(self, ext_id: str) -> StoredDoc | None:
        row = self._conn().execute(
            "SELECT id, ext_id, title, text, metadata FROM docs WHERE ext_id = ?", (ext_id,)
        ).fetchone()
        return _stored(row) if row else None

    def external_ids(self) -> np.ndarray:
        """All external ids, indexed by internal id (object array; cached: the store is immutable)."""
        if self._external_ids is None or not self.readonly:
            ids = [r[0] for r in self._conn().execute("SELECT ext_id FROM docs ORDER BY id")]
            self._external_ids = np.array(ids, dtype=object)
        return self._external_ids

    def internal_ids(self, ext_ids: Sequence[str]) -> np.ndarray:
        """Internal ids for external ids, in order; -1 for ids not in the store."""
        wanted = list(ext_ids)
        found: dict[str, int] = {}
        for start in range(0, len(wanted), _SQL_VARS):
            part = wanted[start : start + _SQL_VARS]
            marks = ",".join("?" * len(part))
            found.update(
                self._conn().execute(f"SELECT ext_id, id FROM docs WHERE ext_id IN ({marks})", part)
            )
        return np.array([found.get(e, -1) for e in wanted], dtype=np.int64)

    def matching(self, filters: Mapping[str, Any]) -> np.ndarray:
        """Bool mask over internal ids of documents whose metadata match the filter.

        The filter language (equality, lists, operators gt/gte/lt/lte/ne/in/nin/exists, combinators
        all/any/not) is described in ``trident_search.indexers.filters``; :class:`FilterError` names
        the path of a bad part. Masks are cached: the same filter is cheap to repeat.
        """
        key = _filters.canonical(filters)
        return self._matching(key).copy()

    def _matching_uncached(self, key: str) -> np.ndarray:
        return self.columns.mask(_filters.parse(json.loads(key)))

    def filters_changed(self) -> None:
        """Forget cached masks and metadata columns; every write to the store must call this."""
        self._matching.cache_clear()
        self.columns.invalidate()

    def facet(self, field: str, allowed: np.ndarray | None, *, size: int = 10,
              ranges: Sequence[Mapping[str, Any]] = ()) -> tuple[list[tuple[Any, int]], list[int]]:
        """Top ``size`` (value, document count) pairs of ``field`` among ``allowed`` documents, and
        the document count inside each range (``{"gte": 2015, "lt": 2018}``)."""
        col = self.columns.column(field)
        return (_filters.value_counts(col, allowed, size),
                [_filters.range_count(col, r, allowed) for r in ranges])

    def field_values(self, internal_ids: Sequence[int] | np.ndarray, field: str) -> list[Any]:
        """Each document's first value of ``field`` (None when it has none), for collapsing."""
        col = self.columns.column(field)
        ids = np.asarray(internal_ids, dtype=np.int64)
        first = np.searchsorted(col.docs, ids)
        out: list[Any] = []
        for i, row in zip(ids.tolist(), first.tolist(), strict=True):
            out.append(col.value(row) if row < len(col.docs) and col.docs[row] == i else None)
        return out


def _stored(row: tuple[int, str, str, str, str]) -> StoredDoc:
    return StoredDoc(row[0], row[1], row[2], row[3], json.loads(row[4]))



# -- live writes: the write-ahead log (``trident_search.core.live``) ------------------------------
# New tables only; the ``docs`` table keeps one row per internal id ever assigned, so every mask
# stays indexed by internal id. A deleted (or replaced) document keeps its row, its ``ext_id``
# renamed to ``DELETED_PREFIX + <internal id>`` (``ext_id`` is UNIQUE) and its id in ``live_deleted``.
_LIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS live_log (
    seq INTEGER PRIMARY KEY,
    op TEXT NOT NULL,
    ext_id TEXT NOT NULL,
    internal_id INTEGER,
    old_id INTEGER,
    payload BLOB
);
CREATE TABLE IF NOT EXISTS live_deleted (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, ext_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS live_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
DELETED_PREFIX = "\x00deleted:"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One applied write: ``op`` "upsert" (``internal_id`` new, ``old_id`` the replaced one or None,
    ``payload`` the retrievers' encodings, pickled) or "delete" (``old_id`` the removed internal id)."""

    seq: int
    op: str
    ext_id: str
    internal_id: int | None
    old_id: int | None
    payload: bytes | None


def has_live_log(path: str | Path) -> bool:
    """Whether the docstore at ``path`` has taken live writes (its files then differ from the manifest's)."""
    p = Path(path)
    if not p.is_file():
        return False
    mode = "ro" if os.access(p.parent, os.W_OK) else "ro&immutable=1"
    conn = sqlite3.connect(f"file:{p}?mode={mode}", uri=True)
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'live_log'").fetchone() is not None
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def live_external_ids(store: DocStore) -> np.ndarray:
    """``store.external_ids()`` with each tombstone's original external id restored (a replaced
    document's old and new internal ids then share it). Parts that map their own stored ids to
    internal ids (BM25) need these: until the log is replayed they still hold deleted documents."""
    ext = store.external_ids().copy()
    try:
        rows = store._conn().execute("SELECT id, ext_id FROM live_deleted").fetchall()
    except sqlite3.OperationalError:  # never written
        return ext
    for i, e in rows:
        ext[i] = e
    return ext


class WriteLog:
    """The write-ahead log of live writes, in the docstore's own database.

    One request's writes are one transaction on a connection with ``synchronous=FULL``: when
    :meth:`apply` returns, the documents, tombstones and log entries are on disk (fsynced), so an
    acknowledged write survives ``kill -9``, and an unacknowledged one is all there or all absent.
    The searchable structures replay the entries they had not absorbed (:meth:`since`) on open.
    """

    def __init__(self, store: DocStore) -> None:
        if not os.access(store.path.parent, os.W_OK):
            raise DocStoreError(f"{store.path.parent} is not writable: this index cannot take writes")
        self.store = store
        self._lock = threading.Lock()
        conn = sqlite3.connect(f"file:{store.path}", uri=True, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(_LIVE_SCHEMA)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def apply(self, upserts: Sequence[tuple[Document, bytes | None]], deletes: Sequence[str]) -> list[LogEntry]:
        """Apply one request's writes durably and return their log entries, in order.

        Upserts get fresh internal ids at the end; a replaced or deleted document is tombstoned.
        All or nothing: any error (a delete of an absent id is a ``KeyError``) rolls it all back.
        """
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                next_id = int(conn.execute("SELECT coalesce(max(id) + 1, 0) FROM docs").fetchone()[0])
                seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM live_log").fetchone()[0])
                entries: list[LogEntry] = []

                def tombstone(ext: str) -> int | None:
                    row = conn.execute("SELECT id FROM docs WHERE ext_id = ?", (ext,)).fetchone()
                    if row is None:
                        return None
                    old = int(row[0])
                    conn.execute("UPDATE docs SET ext_id = ? WHERE id = ?", (f"{DELETED_PREFIX}{old}", old))
                    conn.execute("INSERT INTO live_deleted VALUES (?, ?, ?)", (old, seq, ext))
                    return old

                for doc, payload in upserts:
                    seq += 1
                    old = tombstone(doc.id)
                    meta = json.dumps(doc.metadata, sort_keys=True, ensure_ascii=False)
                    conn.execute("INSERT INTO docs VALUES (?, ?, ?, ?, ?)",
                                 (next_id, doc.id, doc.title, doc.text, meta))
                    conn.execute("INSERT INTO live_log VALUES (?, 'upsert', ?, ?, ?, ?)",
                                 (seq, doc.id, next_id, old, payload))
                    entries.append(LogEntry(seq, "upsert", doc.id, next_id, old, payload))
                    next_id += 1
                for ext in deletes:
                    seq += 1
                    old = tombstone(ext)
                    if old is None:
                        raise KeyError(ext)
                    conn.execute("INSERT INTO live_log VALUES (?, 'delete', ?, NULL, ?, NULL)", (seq, ext, old))
                    entries.append(LogEntry(seq, "delete", ext, None, old, None))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        # What the store cached (filter masks, the id array) no longer describes it.
        self.store.filters_changed()
        self.store._external_ids = None
        return entries

    def since(self, seq: int) -> list[LogEntry]:
        """Entries after ``seq``, in order (what a structure that absorbed up to ``seq`` replays)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, op, ext_id, internal_id, old_id, payload FROM live_log WHERE seq > ? ORDER BY seq",
                (seq,)).fetchall()
        return [LogEntry(*r) for r in rows]

    def last_seq(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM live_log").fetchone()[0])

    def deleted(self) -> np.ndarray:
        """Internal ids of deleted or replaced documents (int64, ascending)."""
        with self._lock:
            rows = self._conn.execute("SELECT id FROM live_deleted ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def get_state(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM live_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        """Durably record one value (a structure's absorbed sequence number, the last merge...)."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO live_state VALUES (?, ?)", (key, value))

