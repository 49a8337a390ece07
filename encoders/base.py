"""What the sparse and dense encoders share: argument checks, device, model loading, the ONNX query graph."""

from __future__ import annotations

import os
from typing import Any

from trident_search.encoders.models import ModelSource, load_sentence_transformers, resolve_model
from trident_search.encoders.onnx import OnnxQueryModel
from trident_search.encoders.runtime import (
    check_backend,
    check_positive,
    check_threads,
    resolve_device,
    set_max_length,
    torch_threads,
)


class SentenceTransformersEncoder:
    """Loads a sentence-transformers model of class ``model_cls`` with our validated settings."""

    def __init__(
        self,
        model_cls: type,
        model: str | os.PathLike[str] | None,
        default: str,
        *,
        device: str,
        max_length: int,
        batch_size: int,
        threads: int | None,
        backend: str,
    ) -> None:
        check_positive(max_length=max_length, batch_size=batch_size)
        self.threads = check_threads(threads)
        self.backend = check_backend(backend)
        self.device = resolve_device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        source = resolve_model(model, default)
        self._model: Any
        self._source: ModelSource
        self._model, self._source = load_sentence_transformers(model_cls, source, self.device)
        set_max_length(self._model, max_length)
        self._onnx: OnnxQueryModel | None = None

    def _attach_onnx(self) -> None:
        """Export (or reuse the cached) int8 query graph; called last, once the model is fully set up."""
        if self.backend == "onnx":
            with torch_threads(self.threads):
                self._onnx = OnnxQueryModel.from_sentence_transformers(
                    self._model, self._source, max_length=self.max_length, threads=self.threads
                )

    @property
    def name(self) -> str:
        """Model name to record in a manifest; passing it back as ``model=`` loads the same weights."""
        return self._source.name

    @property
    def revision(self) -> str:
        """Content pin of the weights (``<dist>==<version>``, a hub commit, or ``sha256:...``)."""
        return self._source.revision
