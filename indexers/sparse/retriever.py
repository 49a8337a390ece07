"""The learned-sparse index as a :class:`~trident_search.indexers.retriever.Retriever`."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from trident_search.indexers.corpus import Document
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
from trident_search.indexers.sparse._index import SparseIndex
from trident_search.indexers.sparse._params import SparseIndexError, SparseParams


class SparseOptions(RetrieverOptions):
    exact: bool = Field(
        False, description="Score every document exactly (brute force) instead of the approximate "
        "block-pruned search; the ground truth for its recall, and slower."
    )
    query_cut: int | None = Field(
        None, ge=1, le=4096, description="Traverse the lists of just this many heaviest query terms "
        "(default from the index). Higher is more exact and slower."
    )
    heap_factor: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="Skip a block whose upper bound is below "
        "heap_factor x the k-th best score so far (default from the index); 0 skips nothing, 1 the most."
    )


def index_params(params: dict[str, Any]) -> SparseParams:
    """``SparseParams`` from a dict; unknown names are an error listing the valid ones."""
    valid = [f.name for f in fields(SparseParams)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise SparseIndexError(f"unknown sparse parameters {unknown}; valid: {', '.join(valid)}")
    try:
        return SparseParams(**params)
    except TypeError as exc:
        raise SparseIndexError(str(exc)) from None


class SparsePart(Part):
    """The main index, plus (live writes) a small delta of written documents searched exactly.

    Written documents take internal ids after the main index's; deleted ones are hidden by the
    live mask in ``allowed``. ``state`` (main index, delta) is replaced as one tuple, never changed
    in place, so a search holds one consistent snapshot without a lock. A merge builds a new main
    index over every row (deleted rows emptied, so internal ids stay put) into a new generation.
    """

    def __init__(self, index: SparseIndex) -> None:
        self.state: tuple[SparseIndex, sp.csr_matrix | None] = (index, None)
        self._seq = 0

    @property
    def index(self) -> SparseIndex:
        return self.state[0]

    def search(self, query: Any, depth: int, *, allowed: np.ndarray | None,
               options: RetrieverOptions) -> Results:
        index, delta = self.state
        n_main = index.n_docs
        main_allowed = None if allowed is None else fit_mask(allowed, n_main)
        ids, scores = index.search(query, depth, allowed=main_allowed, **options.knobs())
        ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float32)
        if delta is None:
            return Results(ids, scores)
        d_scores = np.asarray((delta @ sp.csr_matrix(query).T).toarray(), np.float32).ravel()
        keep = d_scores > 0
        if allowed is not None:
            keep &= fit_mask(allowed[n_main:], delta.shape[0])
        d_ids = np.flatnonzero(keep)
        all_ids = np.concatenate([ids, d_ids + n_main])
        all_scores = np.concatenate([scores, d_scores[d_ids]])
        order = np.lexsort((all_ids, -all_scores))[:depth]
        return Results(all_ids[order], all_scores[order])

    def add(self, internal_ids: np.ndarray, docs: Sequence[Document], encoded: Any) -> None:
        index, delta = self.state
        held = index.n_docs + (0 if delta is None else delta.shape[0])
        if internal_ids.size and int(internal_ids[0]) != held:
            raise ValueError(f"sparse: internal id {int(internal_ids[0])} written, {held} expected")
        rows = sp.csr_matrix(encoded, dtype=np.float32)
        self.state = (index, rows if delta is None else sp.vstack([delta, rows], format="csr"))

    def delta_size(self) -> int:
        delta = self.state[1]
        return 0 if delta is None else int(delta.shape[0])

    def absorbed(self) -> int:
        return self._seq

    def merge(self, seq: int, *, live: np.ndarray | None, resolve: Any, folder: Path,
              manifest: Manifest) -> Path | None:
        """Build the main index over every row so far (exact weights; deleted rows emptied) with
        the build's parameters into ``folder``; searches keep using the old state meanwhile."""
        index, delta = self.state
        ptr, docs, weights = index.exact_lists()
        main = sp.csc_matrix((weights, docs, ptr), shape=(index.n_docs, index.vocab_size)).tocsr()
        rows = main if delta is None else sp.vstack([main, delta], format="csr")
        if live is not None:
            keep = fit_mask(live, rows.shape[0]).astype(np.float32)
            rows = (sp.diags(keep) @ rows).tocsr()
            rows.eliminate_zeros()
        params = index_params(dict((manifest.params.get("sparse") or {}).get("index", {})))
        SparseIndex.build(rows, params).save(folder)
        return folder

    def open_generation(self, folder: Path, seq: int) -> None:
        """Serve the generation in ``folder`` (it absorbed the log up to ``seq``); written rows
        after it stay in the delta."""
        index, delta = self.state
        new = SparseIndex.load(folder, mmap=True)
        held = index.n_docs + (0 if delta is None else delta.shape[0])
        rest = None
        if held > new.n_docs and delta is not None:
            rest = delta[new.n_docs - index.n_docs:]
        self.state = (new, rest)
        self._seq = seq




class SparseRetriever(Retriever):
    """SPLADE (SPLADE-tiny offline by default) into a Seismic-like index with block summaries."""

    name = "sparse"
    options = SparseOptions
    description = "learned sparse (SPLADE) with Seismic-style block summaries"

    def check_params(self, params: dict[str, Any]) -> None:
        """Fail before any build work on a parameter ``write`` would reject."""
        check_model_params("sparse", params, {"doc_top_k", "index"}, ("doc_top_k", "token_budget"))
        index_params(params.get("index", {}))

    def document_encoder(self, ctx: BuildContext) -> DocumentEncoder:
        from trident_search.encoders.sparse import SparseEncoder

        return ModelDocumentEncoder(SparseEncoder(
            ctx.params.get("model"), doc_top_k=ctx.params.get("doc_top_k"), **document_options(ctx)), "vocab_size")

    def write(self, out: Path, ctx: BuildContext, *, docs: Callable[[], Iterator[Document]],
              chunks: Callable[[], Iterator[Any]] | None) -> dict[str, Any]:
        assert chunks is not None, "the sparse build needs its encodings"
        params = index_params(ctx.params.get("index", {}))
        matrix = sp.vstack(list(chunks()), format="csr")
        if matrix.shape[0] != ctx.n_docs:
            raise ValueError(f"sparse encodings hold {matrix.shape[0]} rows for {ctx.n_docs} documents")
        SparseIndex.build(matrix, params).save(out)
        return {"index": asdict(params), "doc_top_k": ctx.params.get("doc_top_k")}

    def query_encoder(self, manifest: Manifest, *, backend: str) -> QueryEncoder:
        from trident_search.encoders.sparse import SparseEncoder

        return ModelQueryEncoder(SparseEncoder(
            manifest.models["sparse"]["name"], device="cpu", threads=1, backend=backend,
            max_length=int(manifest.params.get("max_length", 256)),
        ))

    def open(self, path: Path, manifest: Manifest, *, external_ids: np.ndarray) -> Part:
        return SparsePart(SparseIndex.load(path, mmap=True))
