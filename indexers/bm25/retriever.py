"""BM25 as a :class:`~trident_search.indexers.retriever.Retriever`: Lucene analyses the query text itself."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.errors import IndexLoadError
from trident_search.indexers.bm25._format import FIELDS
from trident_search.indexers.bm25._search import MAX_QUERY_TERMS, BM25Index, _filtered
from trident_search.indexers.bm25._stats import GlobalStats
from trident_search.indexers.bm25._writer import BM25Writer, committed_seq, reconcile
from trident_search.indexers.corpus import Document
from trident_search.indexers.manifest import Manifest
from trident_search.indexers.retriever import (
    BuildContext,
    IdentityQueryEncoder,
    Part,
    QueryEncoder,
    Results,
    Retriever,
    RetrieverOptions,
)


class BM25Part(Part):
    """A loaded Lucene index answering in internal ids.

    Lucene doc ids map to internal ids through one int64 array made at open (each Lucene doc's
    stored ``id`` looked up once in the docstore's external ids), so a search builds no per-hit
    objects. For one shard of a sharded index, :meth:`set_global_stats` makes it score as the
    single-node index would.
    """

    def __init__(self, index: BM25Index, external_ids: np.ndarray) -> None:
        self.index = index
        self._external = external_ids
        internal = {str(ext): i for i, ext in enumerate(external_ids.tolist())}
        try:
            self._internal = np.fromiter((internal[d] for d in index.lucene_ids.tolist()), np.int64,
                                         index.lucene_ids.size)
        except KeyError as exc:
            raise IndexLoadError(f"the BM25 index at {index.path} holds document {exc.args[0]!r}, "
                                 "which the docstore does not; rebuild the index") from None

    def search(self, query: Any, depth: int, *, allowed: np.ndarray | None,
               options: RetrieverOptions) -> Results:
        if self._writer is not None:
            return self._search_live(query, depth, allowed)
        filter_ids = None if allowed is None else self._external[allowed].tolist()
        docs, scores = self.index.search_docs(query, depth, filter_ids=filter_ids)
        warning = None
        if self.index.prepare(query).truncated:
            warning = f"bm25: the query was cut to its first {MAX_QUERY_TERMS} terms"
        return Results(self._internal[docs], scores.astype(np.float32, copy=False), warning)

    def local_stats(self) -> bytes:
        """This shard's BM25 statistics (one part of a :class:`GlobalStats`)."""
        return self.index.local_stats()

    def set_global_stats(self, stats: GlobalStats | None) -> None:
        """Score with the statistics of every shard (None: this index's own again)."""
        self.index.set_global_stats(stats)

    # -- live writes (indexers/bm25/_writer.py) ---------------------------------------------------
    applies_deletes = True  # Lucene drops deleted documents itself: no live mask needed
    _writer: BM25Writer | None = None
    _added: list[str]

    def _live(self) -> BM25Writer:
        if self._writer is None:  # opened on the first write: a read-only server takes no write.lock
            self._writer = BM25Writer(self.index, self._internal)
            self._added = []
        return self._writer

    def add(self, internal_ids: np.ndarray, docs: Sequence[Document], encoded: Any) -> None:
        self._live().upsert(docs, internal_ids.tolist())
        self._added.extend(d.id for d in docs)  # external ids of internal ids len(_external), ...

    def delete(self, internal_ids: np.ndarray, ext_ids: Sequence[str]) -> None:
        self._live().delete(ext_ids)

    def refresh(self) -> None:
        if self._writer is not None:
            self._writer.refresh()

    def commit(self, seq: int) -> None:
        if self._writer is not None:
            self._writer.commit(seq)

    def absorbed(self) -> int:
        return committed_seq(self.index.path)

    def merge(self, seq: int, *, live: np.ndarray | None, resolve: Callable[[Sequence[str]], np.ndarray],
              folder: Path, manifest: Manifest) -> Path | None:
        """In place: expunge deletions (exact statistics) and commit."""
        self._live().merge(seq, resolve)
        return None

    def _search_live(self, query: Any, depth: int, allowed: np.ndarray | None) -> Results:
        """:meth:`search` over the writer's latest reader (its doc ids and internal ids taken together)."""
        lucene, internal = self._writer.state  # type: ignore[union-attr]
        prepared = self.index.prepare(query)
        warning = f"bm25: the query was cut to its first {MAX_QUERY_TERMS} terms" if prepared.truncated else None
        if not prepared.text or (allowed is not None and not allowed.any()):
            return Results(np.empty(0, np.int64), np.empty(0, np.float32), warning)
        lucene_query = self.index._query(prepared.text)
        if allowed is not None:
            ids = np.flatnonzero(allowed)
            base = self._external.size
            ext = self._external[ids[ids < base]].tolist() + [self._added[i - base] for i in ids[ids >= base]]
            lucene_query = _filtered(lucene_query, ext)
        docs, scores = lucene.top(lucene_query, depth)
        return Results(internal[docs], scores.astype(np.float32, copy=False), warning)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.index.close()


class BM25Retriever(Retriever):
    """Anserini BM25 (k1=0.9, b=0.4), ``flat`` (title + text) or ``multifield`` fields."""

    name = "bm25"
    description = "BM25 over Lucene (Anserini's BEIR settings)"
    writes_in_place = True  # live writes go to the Lucene index itself (_writer.py)

    def check_params(self, params: dict[str, Any]) -> None:
        """Fail before any build work on a parameter ``write`` would reject."""
        unknown = sorted(set(params) - {"fields", "threads"})
        if unknown:
            raise ValueError(f"unknown bm25 parameters {unknown}; valid: fields, threads")
        if params.get("fields", "flat") not in FIELDS:
            raise ValueError(f"bm25 fields must be one of {', '.join(FIELDS)}, got {params['fields']!r}")
        threads = params.get("threads", 2)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"bm25 threads must be a positive integer, got {threads!r}")

    def write(self, out: Path, ctx: BuildContext, *, docs: Callable[[], Iterator[Document]],
              chunks: Callable[[], Iterator[Any]] | None) -> dict[str, Any]:
        self.check_params(ctx.params)
        fields = ctx.params.get("fields", "flat")
        threads = int(ctx.params.get("threads", 2))
        BM25Index.build((_indexable(d) for d in docs()), out, fields=fields, threads=threads)
        return {"fields": fields, "threads": threads}

    def query_encoder(self, manifest: Manifest, *, backend: str) -> QueryEncoder:
        return IdentityQueryEncoder("Lucene analyzer")

    def open(self, path: Path, manifest: Manifest, *, external_ids: np.ndarray) -> Part:
        reconcile(path)  # live writes: the params file's count follows the last Lucene commit
        return BM25Part(BM25Index.load(path), external_ids)


def _indexable(doc: Document) -> Document:
    """An empty document (no title, no text) is valid, but Anserini drops a document whose contents
    are blank. Give it a stop word instead: it is then indexed with no terms, so it never matches a
    query and leaves the collection statistics (documents with the field, average length) as they are."""
    if doc.title.strip() or doc.text.strip():
        return doc
    return Document(doc.id, "", "the", doc.metadata)
