"""Live writes to a BM25 index: Lucene's ``IndexWriter`` on the index folder, near-real-time reopen.

* **The documents Anserini would have built.** Each written document goes through Anserini's own
  ``BeirFlatCollection``/``BeirMultifieldCollection`` document and ``DefaultLuceneDocumentGenerator``
  with the build's options (positions, document vectors) and the build's analyzer
  (``DefaultEnglishAnalyzer``: Porter, Lucene stop words), so a written document is indexed exactly
  as a batch build indexes it. Upserts are ``updateDocument`` by the ``id`` term, deletes
  ``deleteDocuments``: both idempotent, so replaying the log after a crash is safe.
* **Exact statistics.** Searches see the writer's near-real-time reader (``openIfChanged``), whose
  term and collection statistics include every added document. A deleted document still counts in
  Lucene's statistics until its segment is merged; :meth:`BM25Writer.merge` expunges deletes
  (``forceMergeDeletes``), after which scores equal a batch build of the resulting corpus.
* **Doc ids to internal ids, per segment.** A segment never changes once written except for its
  deletions, so the stored ``id`` (external id) and internal id of its docs are read once and cached by
  segment name; a new reader's arrays are the cached arrays of its segments concatenated. Until a
  merge, the merge policy is ``NoMergePolicy``: a new segment then only holds newly written
  documents, whose internal ids the writer was told. A merge maps its segments through the docstore.
* **Durability** is the write-ahead log's (``trident_search.core.live``); Lucene commits only on
  :meth:`commit` (close, merge), recording the log sequence number it absorbed in the commit's user
  data, and the params file's document count follows the commit (:func:`reconcile` repairs a crash
  between the two).
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.indexers import jvm
from trident_search.indexers.bm25._format import COLLECTIONS, PARAMS_FILE, read_params
from trident_search.indexers.bm25._search import BM25Index, _Lucene, _score_doc_readers, _stored_ids
from trident_search.indexers.corpus import Document

SEQ_KEY = "trident_seq"
_RETIRE_S = 30.0  # an old reader is closed this long after a newer one replaced it


def _directory(path: Path) -> Any:
    return jvm.autoclass("org.apache.lucene.store.FSDirectory").open(
        jvm.autoclass("java.io.File")(str(path)).toPath())


def committed_seq(path: Path) -> int:
    """The log sequence number the last Lucene commit at ``path`` absorbed (0: none)."""
    directory = _directory(path)
    try:
        infos = jvm.autoclass("org.apache.lucene.index.SegmentInfos").readLatestCommit(directory)
        value = infos.getUserData().get(SEQ_KEY)
        return int(value) if value is not None else 0
    finally:
        directory.close()


def reconcile(path: Path) -> None:
    """Make the params file's document count match the last commit (a crash may have fallen
    between a live commit and the params file's update). Does nothing for an index never written."""
    if not (path / PARAMS_FILE).is_file() or committed_seq(path) == 0:
        return
    directory = _directory(path)
    try:
        reader = jvm.autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
        try:
            n = int(reader.maxDoc())
        finally:
            reader.close()
    finally:
        directory.close()
    _write_count(path, n)


def _write_count(path: Path, n: int) -> None:
    """Record ``n`` (Lucene's maxDoc: deleted documents count until merged away) as the params
    file's document count, which the loader compares with ``SimpleSearcher.get_total_num_docs``."""
    params = json.loads((path / PARAMS_FILE).read_text(encoding="utf-8"))
    if params.get("documents") == n:
        return
    params["documents"] = n
    tmp = path / f".{PARAMS_FILE}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(params, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / PARAMS_FILE)


class BM25Writer:
    """Writes to one opened :class:`BM25Index` and swaps near-real-time readers into it.

    ``internal`` maps the opened index's Lucene doc ids to internal ids. Calls are serialised by
    the caller (one writer at a time).
    """

    def __init__(self, index: BM25Index, internal: np.ndarray) -> None:
        autoclass = jvm.autoclass
        self.index = index
        params = read_params(index.path)
        self.fields = params["fields"]
        self._directory = _directory(index.path)
        config = autoclass("org.apache.lucene.index.IndexWriterConfig")(
            autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance())
        config.setOpenMode(autoclass("org.apache.lucene.index.IndexWriterConfig$OpenMode").APPEND)
        config.setSimilarity(autoclass("org.apache.lucene.search.similarities.BM25Similarity")(
            float(index.k1), float(index.b)))
        self._no_merges = autoclass("org.apache.lucene.index.NoMergePolicy").INSTANCE
        config.setMergePolicy(self._no_merges)
        self.writer = autoclass("org.apache.lucene.index.IndexWriter")(self._directory, config)
        args = autoclass("io.anserini.index.IndexCollection$Args")()
        args.storePositions = True
        args.storeDocvectors = True
        self._generator = autoclass("io.anserini.index.generator.DefaultLuceneDocumentGenerator")(args)
        self._source = autoclass(f"io.anserini.collection.{COLLECTIONS[self.fields]}$Document")
        self._mapper = autoclass("com.fasterxml.jackson.databind.ObjectMapper")()
        self._term = autoclass("org.apache.lucene.index.Term")
        self._term_query = autoclass("org.apache.lucene.search.TermQuery")
        self._pending: dict[str, int] = {}  # written since the last refresh: external -> internal id
        self._segments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._retired: list[tuple[float, Any]] = []
        self._lock = threading.Lock()
        self.dirty = False
        # The first NRT reader holds the same segments as the reader the index was opened with.
        old = index._lucene
        reader = autoclass("org.apache.lucene.index.DirectoryReader").open(self.writer)
        leaves = _leaves(reader)
        if sum(n for _, _, n in leaves) != old.ids.size:
            reader.close()
            self.writer.rollback()
            raise RuntimeError(f"the BM25 index at {index.path} changed since it was opened")
        for name, base, n in leaves:
            self._segments[name] = (old.ids[base:base + n], internal[base:base + n])
        self.state = (old, internal)
        self._swap(reader)

    # -- writes ---------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[Document], internal_ids: Sequence[int]) -> None:
        for doc, iid in zip(docs, internal_ids, strict=True):
            self.writer.updateDocument(self._term("id", doc.id), self._lucene_doc(doc))
            self._pending[doc.id] = int(iid)
        self.dirty = True

    def delete(self, ext_ids: Sequence[str]) -> None:
        for ext in ext_ids:
            # (jnius picks the Query... overload for varargs: a TermQuery deletes the same documents)
            self.writer.deleteDocuments(self._term_query(self._term("id", ext)))
            self._pending.pop(ext, None)
        self.dirty = True

    def _lucene_doc(self, doc: Document) -> Any:
        title, text = doc.title, doc.text
        if not title.strip() and not text.strip():
            text = "the"  # as the build does (BM25Retriever's _indexable): indexed, with no terms
        if self.fields == "multifield" and not text.strip():
            text = title
        node = self._mapper.readTree(json.dumps({"_id": doc.id, "title": title, "text": text}, ensure_ascii=False))
        return self._generator.createDocument(self._source(node))

    # -- visibility -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Open a near-real-time reader over every write so far and swap it in."""
        if not self.dirty:
            return
        reader = jvm.autoclass("org.apache.lucene.index.DirectoryReader").openIfChanged(
            self.state[0]._reader, self.writer)
        self.dirty = False
        if reader is not None:
            self._swap(reader)

    def _swap(self, reader: Any, resolve: Callable[[Sequence[str]], np.ndarray] | None = None) -> None:
        leaves = _leaves(reader)
        ids, internal = [], []
        seen = set()
        for name, _base, n in leaves:
            seen.add(name)
            if name not in self._segments:
                leaf = reader.leaves().get(_leaf_index(leaves, name)).reader()
                ext = np.array(_stored_ids(leaf), dtype=object).astype(str) if n else np.empty(0, str)
                known = [self._pending.get(e) for e in ext.tolist()]
                if all(k is not None for k in known):
                    iids = np.array(known, dtype=np.int64)
                elif resolve is not None:  # a merged segment (deleted docs map to -1; never hit)
                    iids = np.asarray(resolve(ext.tolist()), dtype=np.int64)
                else:
                    raise RuntimeError(f"BM25 segment {name} holds documents the writer was not given")
                self._segments[name] = (ext, iids)
            ids.append(self._segments[name][0])
            internal.append(self._segments[name][1])
        for name in list(self._segments):
            if name not in seen:
                del self._segments[name]
        self._pending.clear()
        all_ids = np.concatenate(ids) if ids else np.empty(0, str)
        lucene = _lucene_over(reader, self.index.k1, self.index.b, all_ids.astype(str))
        old = self.state[0]
        self.state = (lucene, np.concatenate(internal) if internal else np.empty(0, np.int64))
        self.index._lucene = lucene
        now = time.monotonic()
        if old._reader is not reader:
            self._retired.append((now, old))
        keep = []
        for at, luc in self._retired:
            if now - at > _RETIRE_S:
                luc.close()
            else:
                keep.append((at, luc))
        self._retired = keep

    # -- persistence ------------------------------------------------------------------------------
    def commit(self, seq: int) -> None:
        """Commit every write so far as having absorbed log entries up to ``seq``."""
        data = jvm.autoclass("java.util.HashMap")()
        data.put(SEQ_KEY, str(int(seq)))
        self.writer.setLiveCommitData(data.entrySet())
        self.writer.commit()
        _write_count(self.index.path, int(self.writer.getDocStats().maxDoc))

    def merge(self, seq: int, resolve: Callable[[Sequence[str]], np.ndarray]) -> None:
        """Expunge deleted documents (their statistics go with them), commit, swap the reader in.
        ``resolve(ext_ids)`` gives the current internal ids of live external ids."""
        self.refresh()
        policy = jvm.autoclass("org.apache.lucene.index.TieredMergePolicy")()
        policy.setForceMergeDeletesPctAllowed(0.0)  # every segment with a deletion: exact statistics
        self.writer.getConfig().setMergePolicy(policy)
        try:
            self.writer.forceMergeDeletes(True)
        finally:
            self.writer.getConfig().setMergePolicy(self._no_merges)
        self.commit(seq)
        reader = jvm.autoclass("org.apache.lucene.index.DirectoryReader").openIfChanged(
            self.state[0]._reader, self.writer)
        if reader is not None:
            self._swap(reader, resolve)

    def close(self) -> None:
        """Close the writer (uncommitted writes are replayed from the log at the next open)."""
        self.writer.close()
        for _, luc in self._retired:
            luc.close()
        self._retired = []


def _leaves(reader: Any) -> list[tuple[str, int, int]]:
    """(segment name, doc base, maxDoc) of each leaf of a reader, in order."""
    out = []
    leaves = reader.leaves()
    for i in range(leaves.size()):
        ctx = leaves.get(i)
        seg = jvm.cast("org.apache.lucene.index.SegmentReader", ctx.reader())
        out.append((str(seg.getSegmentInfo().info.name), int(ctx.docBase), int(seg.maxDoc())))
    return out


def _leaf_index(leaves: list[tuple[str, int, int]], name: str) -> int:
    return next(i for i, (n, _, _) in enumerate(leaves) if n == name)


def _lucene_over(reader: Any, k1: float, b: float, ids: np.ndarray) -> _Lucene:
    """A :class:`_Lucene` (the searcher the index searches with) over an already opened reader."""
    autoclass, klass = jvm.autoclass, jvm.autoclass("java.lang.Class").forName
    lucene = _Lucene.__new__(_Lucene)
    lucene._reader = reader
    searcher = autoclass("trident.bm25.GlobalStatsSearcher")(reader)
    searcher.setSimilarity(autoclass("org.apache.lucene.search.similarities.BM25Similarity")(float(k1), float(b)))
    lucene.searcher = searcher
    lucene.ids = ids
    top_docs, int_type = klass("org.apache.lucene.search.TopDocs"), autoclass("java.lang.Integer").TYPE
    handles = autoclass("java.lang.invoke.MethodHandles")
    method_type = autoclass("java.lang.invoke.MethodType").methodType
    lucene.search_handle = handles.publicLookup().findVirtual(
        klass("org.apache.lucene.search.IndexSearcher"), "search",
        method_type(top_docs, [klass("org.apache.lucene.search.Query"), int_type]),
    ).bindTo(searcher)
    lucene._doc_ids, lucene._scores = _score_doc_readers()
    return lucene
