"""Query and document encoders over a Trident encoder model, shared by the sparse and dense retrievers.

Both retrievers wrap ``trident_search.encoders`` the same way; only the model class and the shape
fact the manifest records (``vocab_size`` or ``dim``) differ.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trident_search.indexers.corpus import Document
from trident_search.indexers.retriever import BuildContext, DocumentEncoder, QueryEncoder

ENCODER_PARAMS = frozenset({"model", "backend", "precision", "token_budget"})
"""Build parameters every model-backed retriever takes (besides its own)."""


class ModelQueryEncoder(QueryEncoder):
    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.description = f"{encoder.name} ({getattr(encoder, 'backend', 'torch')})"

    def encode(self, query: str) -> Any:
        return self.encoder.encode_queries([query])


class ModelDocumentEncoder(DocumentEncoder):
    """``shape`` names the attribute the manifest records beside the model (``vocab_size``, ``dim``)."""

    def __init__(self, encoder: Any, shape: str) -> None:
        self.encoder = encoder
        self.shape = shape

    def encode(self, docs: Sequence[Document]) -> Any:
        from trident_search.encoders.text import document_text

        return self.encoder.encode_documents([document_text(d.title, d.text) for d in docs])

    def model_info(self) -> dict[str, Any]:
        enc = self.encoder
        return {**enc.describe(), self.shape: getattr(enc, self.shape)}


def document_options(ctx: BuildContext) -> dict[str, Any]:
    """Keyword arguments for an encoder model built to encode a corpus (or written documents)."""
    p = ctx.params
    return dict(device=ctx.device, max_length=ctx.max_length, batch_size=ctx.batch_size, threads=ctx.threads,
                backend=p.get("backend") or "auto", precision=p.get("precision") or "auto",
                token_budget=p.get("token_budget"))


def check_model_params(retriever: str, params: dict[str, Any], own: set[str], positive: tuple[str, ...]) -> None:
    """Unknown keys and non-positive integers are errors naming the retriever and the valid keys."""
    valid = ENCODER_PARAMS | own
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"unknown {retriever} parameters {unknown}; valid: {', '.join(sorted(valid))}")
    for key in positive:
        value = params.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{retriever} {key} must be a positive integer, got {value!r}")


def fit_mask(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` cut or padded with False to ``n`` entries (documents written after it was made)."""
    return mask[:n] if mask.size >= n else np.concatenate([mask, np.zeros(n - mask.size, bool)])
