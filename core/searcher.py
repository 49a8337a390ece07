"""The Python API: open an index, search it, close it. The server runs the same engine.

    from trident_search import Searcher
    with Searcher.open("indexes/demo") as s:
        hits = s.search("vitamin D and bone density", k=10, mode="hybrid")
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trident_search.core.engine import DEFAULT_DEPTH, Engine
from trident_search.core.schemas import DocumentResponse, SearchHit, SearchResponse, search_request_model


class Searcher:
    """A searcher over one index directory. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, index_dir: str | Path, *, warm_up: bool = False, query_backend: str = "onnx",
             threads: int = 3, retrievers: Sequence[str] | None = None,
             default_depth: int = DEFAULT_DEPTH) -> Searcher:
        """Open an index built by ``trident index build`` (or :func:`trident_search.build_index`).

        ``warm_up=True`` runs a few searches first so the first real ones are as fast as the rest
        (JIT compilation, first ONNX Runtime run, cold pages): what a server wants, not a script.
        """
        return cls(Engine.load(index_dir, query_backend=query_backend, threads=threads,
                               retrievers=retrievers, default_depth=default_depth, warm_up=warm_up))

    @property
    def retrievers(self) -> list[str]:
        return self.engine.retrievers

    def search(self, query: str, k: int = 10, *, mode: str = "hybrid", **options: Any) -> list[SearchHit]:
        """The top ``k`` hits, best first. ``options`` are any :class:`SearchRequest` fields
        (``offset``, ``filters``, ``fusion``, ``explain``, per-retriever ``{"dense": {"weight": 0.7}}``)."""
        return self.search_full(query, k, mode=mode, **options).hits

    def search_full(self, query: str, k: int = 10, *, mode: str = "hybrid", **options: Any) -> SearchResponse:
        """Like :meth:`search`, with the fusion used, timings, warnings and the total."""
        request = search_request_model().model_validate({"query": query, "k": k, "mode": mode, **options})
        return self.engine.search(request)

    def document(self, doc_id: str) -> DocumentResponse:
        return self.engine.document(doc_id)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
