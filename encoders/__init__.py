"""Trident encoders: text -> sparse (SPLADE) and dense vectors, with offline default weights.

The encoder classes are imported lazily, so `encoders.text` or `encoders.errors` stay cheap to import
for code that never loads a model.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from encoders.errors import EncoderConfigError, EncoderError, ModelLoadError
from encoders.text import document_text

if TYPE_CHECKING:
    from encoders.dense import DenseEncoder
    from encoders.sparse import SparseEncoder

__all__ = ["DenseEncoder", "EncoderConfigError", "EncoderError", "ModelLoadError", "SparseEncoder", "document_text"]

_LAZY = {"SparseEncoder": "encoders.sparse", "DenseEncoder": "encoders.dense"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")
