"""Trident encoders: text -> sparse (SPLADE) and dense vectors, with offline default weights.

The encoder classes are imported lazily, so `trident_search.encoders.text` or
`trident_search.encoders.errors` stay cheap to import
for code that never loads a model.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from trident_search.encoders.errors import EncoderConfigError, EncoderError, ModelLoadError
from trident_search.encoders.text import document_text

if TYPE_CHECKING:
    from trident_search.encoders.dense import DenseEncoder
    from trident_search.encoders.sparse import SparseEncoder

__all__ = ["DenseEncoder", "EncoderConfigError", "EncoderError", "ModelLoadError", "SparseEncoder", "document_text"]

_LAZY = {"SparseEncoder": "trident_search.encoders.sparse", "DenseEncoder": "trident_search.encoders.dense"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trident_search.encoders' has no attribute {name!r}")
