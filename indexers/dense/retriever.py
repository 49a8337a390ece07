"""Dense retrieval as a :class:`~trident_search.indexers.retriever.Retriever`."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from trident_search.indexers.corpus import Document
from trident_search.indexers.dense._index import DenseIndex, default_factory
from trident_search.indexers.manifest import Manifest
from trident_search.indexers.model_encoders import (
    ModelDocumentEncoder,
    ModelQueryEncoder,
    check_model_params,
    document_options,
    fit_mask,
)
from trident_search.indexers.retriever import (
    BuildContext,
    DocumentEncoder,
    Part,
    QueryEncoder,
    Results,
    Retriever,
    RetrieverOptions,
)


class DenseOptions(RetrieverOptions):
    ef_search: int | None = Field(
        None, ge=1, le=100_000, description="Dense HNSW only: candidates kept while walking the graph "
        "(default from the index). Higher is more exact and slower; other index types ignore it."
    )
    nprobe: int | None = Field(
        None, ge=1, le=65_536, description="Dense IVF only: inverted lists visited per query (default "
        "from the index). Higher is more exact and slower; other index types ignore it."
    )




class _SharedLock:
    """Many searches at once, or one write alone (writes are rare and short)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True  # new searches wait from here on
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class DensePart(Part):
    def __init__(self, index: DenseIndex) -> None:
        self.index = index
        self._lock = _SharedLock()

    def search(self, query: Any, depth: int, *, allowed: np.ndarray | None,
               options: RetrieverOptions) -> Results:
        if allowed is not None and allowed.size != len(self.index):  # written, not yet published
            allowed = fit_mask(allowed, len(self.index))
        with self._lock.shared():
            ids, scores = self.index.search(query, depth, allowed=allowed, **options.knobs())
        keep = ids[0] >= 0
        return Results(ids[0][keep], scores[0][keep])

    def add(self, internal_ids: np.ndarray, docs: Sequence[Document], encoded: Any) -> None:
        if internal_ids.size and int(internal_ids[0]) != len(self.index):
            raise ValueError(f"dense: internal id {int(internal_ids[0])} written, {len(self.index)} expected")
        with self._lock.exclusive():  # FAISS may reallocate its storage: no search beside it
            self.index.add(np.asarray(encoded, dtype=np.float32))

    _seq = 0

    def absorbed(self) -> int:
        return self._seq

    def merge(self, seq: int, *, live: np.ndarray | None, resolve: Any, folder: Path,
              manifest: Manifest) -> Path | None:
        """Save the vectors so far as a generation (deleted ones stay, masked), so the log need
        not be replayed from the start."""
        with self._lock.shared():
            self.index.save(folder)
        return folder

    def open_generation(self, folder: Path, seq: int) -> None:
        new = DenseIndex.load(folder)
        if len(new) < len(self.index):  # rows written after the generation: keep them
            new.add(self.index.index.reconstruct_n(len(new), len(self.index) - len(new)))
        with self._lock.exclusive():
            self.index = new
        self._seq = seq


class DenseRetriever(Retriever):
    """A sentence-transformers encoder (all-MiniLM-L6-v2 offline by default) over FAISS inner product."""

    name = "dense"
    options = DenseOptions
    description = "dense embeddings in FAISS"

    def check_params(self, params: dict[str, Any]) -> None:
        """Fail before any build work on a parameter ``write`` would reject."""
        check_model_params("dense", params, {"factory", "ef_construction"}, ("ef_construction", "token_budget"))
        factory = params.get("factory")
        if factory is not None and (not isinstance(factory, str) or not factory.strip()):
            raise ValueError(f"dense factory must be a FAISS factory string, got {factory!r}")

    def document_encoder(self, ctx: BuildContext) -> DocumentEncoder:
        from trident_search.encoders.dense import DenseEncoder

        return ModelDocumentEncoder(DenseEncoder(ctx.params.get("model"), **document_options(ctx)), "dim")

    def write(self, out: Path, ctx: BuildContext, *, docs: Callable[[], Iterator[Document]],
              chunks: Callable[[], Iterator[Any]] | None) -> dict[str, Any]:
        assert chunks is not None, "the dense build needs its encodings"
        factory = ctx.params.get("factory") or default_factory(ctx.n_docs)
        blocks = iter(chunks())
        first = next(blocks)
        # One thread: HNSW insertion order, hence the graph, is then reproducible.
        index = DenseIndex.build(
            _chain(first, blocks), int(first.shape[1]), factory,
            ef_construction=ctx.params.get("ef_construction"), threads=1 if "HNSW" in factory else None,
        )
        if len(index) != ctx.n_docs:
            raise ValueError(f"dense index holds {len(index)} vectors for {ctx.n_docs} documents")
        index.save(out)
        return {"factory": factory, "ef_construction": ctx.params.get("ef_construction")}

    def query_encoder(self, manifest: Manifest, *, backend: str) -> QueryEncoder:
        from trident_search.encoders.dense import DenseEncoder

        return ModelQueryEncoder(DenseEncoder(
            manifest.models["dense"]["name"], device="cpu", threads=1, backend=backend,
            max_length=int(manifest.params.get("max_length", 256)),
        ))

    def open(self, path: Path, manifest: Manifest, *, external_ids: np.ndarray) -> Part:
        return DensePart(DenseIndex.load(path))


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
