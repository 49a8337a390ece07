"""BM25 as a :class:`~trident_search.indexers.retriever.Retriever`: Lucene analyses the query text itself."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.indexers.bm25._index import FIELDS, MAX_QUERY_TERMS, BM25Index
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
    """A loaded Lucene index answering in internal ids (hits map back through the docstore's ids)."""

    def __init__(self, index: BM25Index, external_ids: np.ndarray) -> None:
        self.index = index
        self._external = external_ids
        self._internal = {str(ext): i for i, ext in enumerate(external_ids.tolist())}

    def search(self, query: Any, depth: int, *, allowed: np.ndarray | None,
               options: RetrieverOptions) -> Results:
        filter_ids = None if allowed is None else self._external[allowed].tolist()
        hits = self.index.search(query, depth, filter_ids=filter_ids)
        warning = None
        if self.index.prepare(query).truncated:
            warning = f"bm25: the query was cut to its first {MAX_QUERY_TERMS} terms"
        ids = np.fromiter((self._internal[h.docid] for h in hits), np.int64, len(hits))
        scores = np.fromiter((h.score for h in hits), np.float32, len(hits))
        return Results(ids, scores, warning)

    def close(self) -> None:
        self.index.close()


class BM25Retriever(Retriever):
    """Anserini BM25 (k1=0.9, b=0.4), ``flat`` (title + text) or ``multifield`` fields."""

    name = "bm25"
    description = "BM25 over Lucene (Anserini's BEIR settings)"

    def write(self, out: Path, ctx: BuildContext, *, docs: Callable[[], Iterator[Document]],
              chunks: Callable[[], Iterator[Any]] | None) -> dict[str, Any]:
        fields = ctx.params.get("fields", "flat")
        if fields not in FIELDS:
            raise ValueError(f"bm25 fields must be one of {', '.join(FIELDS)}, got {fields!r}")
        threads = int(ctx.params.get("threads", 2))
        BM25Index.build(docs(), out, fields=fields, threads=threads)
        return {"fields": fields, "threads": threads}

    def query_encoder(self, manifest: Manifest, *, backend: str) -> QueryEncoder:
        return IdentityQueryEncoder("Lucene analyzer")

    def open(self, path: Path, manifest: Manifest, *, external_ids: np.ndarray) -> Part:
        return BM25Part(BM25Index.load(path), external_ids)
