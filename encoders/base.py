"""What the sparse and dense encoders share: argument checks, device, model loading, the ONNX graph, and the
choice of document backend (int8 ONNX Runtime on CPU by default, torch on a GPU or when asked)."""

from __future__ import annotations

import logging
import os
from typing import Any

from trident_search.encoders.errors import EncoderConfigError, EncoderError
from trident_search.encoders.models import ModelSource, load_sentence_transformers, resolve_model
from trident_search.encoders.onnx import OnnxQueryModel
from trident_search.encoders.runtime import (
    check_backend,
    check_positive,
    check_precision,
    check_threads,
    resolve_device,
    set_max_length,
    torch_threads,
)

logger = logging.getLogger(__name__)


class SentenceTransformersEncoder:
    """Loads a sentence-transformers model of class ``model_cls`` with our validated settings."""

    int8_documents_on_cpu = True
    """Whether ``backend="auto"`` encodes documents with the int8 ONNX graph on CPU (see the subclasses)."""

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
        precision: str = "auto",
        token_budget: int | None = None,
    ) -> None:
        check_positive(max_length=max_length, batch_size=batch_size)
        check_positive(token_budget=token_budget, allow_none=True)
        self.threads = check_threads(threads)
        self.requested_backend = check_backend(backend)
        # Queries: ONNX only when asked for by name (the service chooses); "auto" keeps torch for them.
        self.backend = "onnx" if backend == "onnx" else "torch"
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.token_budget = token_budget
        source = resolve_model(model, default)
        self._model: Any
        self._source: ModelSource
        self._model, self._source = load_sentence_transformers(model_cls, source, self.device)
        set_max_length(self._model, max_length)
        self._onnx: OnnxQueryModel | None = None
        self._documents: Any = None  # a runner from encoders.documents, built on first use
        self._build_documents: Any = None  # its factory; None: sentence-transformers' own encode_document
        self.document_backend = "sentence-transformers"

    def _attach_onnx(self) -> None:
        """Export (or reuse the cached) int8 query graph; called last, once the model is fully set up."""
        if self.backend == "onnx":
            with torch_threads(self.threads):
                self._onnx = OnnxQueryModel.from_sentence_transformers(
                    self._model, self._source, max_length=self.max_length, threads=self.threads
                )

    def _attach_documents(self, *, width: int, top_k: int | None = None) -> None:
        """Choose and build the document runner; called last, like `_attach_onnx`.

        ``backend="auto"``: int8 ONNX on CPU, torch on a GPU (``precision="auto"``: bf16 autocast for dense
        models, fp32 for SPLADE, whichever measured faster). ``"onnx"`` always runs documents
        through ONNX Runtime on the CPU; ``"torch"`` through torch on ``device``. A model whose module stack
        the pipeline does not know (a custom pooling) falls back to sentence-transformers' own ``encode``
        under ``auto``/``torch`` and is refused under ``onnx``.
        """
        from trident_search.encoders.documents import OnnxDocumentRunner, TorchDocumentRunner
        from trident_search.encoders.onnx import cached_graph, fast_tokenizer, graph_pooling

        use_onnx = self.requested_backend == "onnx" or (
            self.requested_backend == "auto" and self.device == "cpu" and self.int8_documents_on_cpu)
        try:
            pooling = graph_pooling(self._model)
            tokenizer = fast_tokenizer(self._model.tokenizer, self.max_length)
        except EncoderConfigError:
            if self.requested_backend == "onnx":
                raise
            return  # sentence-transformers' encode_document keeps working for any model it loads
        sample = self._model.tokenizer(["sample"], return_tensors="np")
        input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
        if use_onnx:
            if self.precision not in ("auto", "int8"):
                raise EncoderConfigError(f"precision={self.precision!r} does not apply to the int8 ONNX backend")
            self.document_backend = "onnx-int8"

            def build() -> Any:
                try:
                    with torch_threads(self.threads):
                        graph = cached_graph(self._model, self._source)
                except EncoderError as exc:
                    if self.requested_backend == "onnx":
                        raise
                    logger.warning("int8 ONNX documents unavailable (%s); encoding documents with torch fp32", exc)
                    return torch_runner("fp32")
                return OnnxDocumentRunner(
                    graph.path, tokenizer, graph.input_names, sparse=pooling == "splade", width=width,
                    threads=self.threads, token_budget=self.token_budget, max_batch=self.batch_size,
                )
        else:
            precision = self.precision
            if precision == "auto":
                # Measured on an H200 (benchmarks/RESULTS.md): SPLADE-tiny ran at 5,247 docs/s in fp32 but 1,350 in
                # fp16 and 1,672 in bf16 autocast (its 30,522-wide vocabulary projection, not a multiple of 8, is
                # the whole cost and half precision does not speed it up); MiniLM gained from bf16 (4,566 vs 3,882).
                precision = "bf16" if self.device.startswith("cuda") and pooling != "splade" else "fp32"
            if precision == "int8":
                raise EncoderConfigError("precision='int8' needs the ONNX backend (backend='onnx' or 'auto' on CPU)")
            self.document_backend = f"torch-{precision}"

            def build() -> Any:
                return torch_runner(precision)

        def torch_runner(precision: str) -> Any:
            return TorchDocumentRunner(
                self._model[0].model, tokenizer, input_names, pooling=pooling, width=width, device=self.device,
                precision=precision, threads=self.threads, token_budget=self.token_budget,
                max_batch=self.batch_size, top_k=top_k,
            )

        self._build_documents = build

    def _document_runner(self) -> Any:
        """The document runner, built on first use (query-only encoders never pay for a document session)."""
        if self._documents is None and self._build_documents is not None:
            self._documents = self._build_documents()
            self.document_backend = self._documents.backend
        return self._documents

    def describe(self) -> dict[str, Any]:
        """What a build manifest records about this encoder: the model and how documents were encoded."""
        return {"name": self.name, "revision": self.revision, "backend": self.document_backend,
                "device": "cpu" if self.document_backend == "onnx-int8" else self.device}

    @property
    def stage_times(self) -> dict[str, float]:
        """Per-stage seconds of the last `encode_documents` call (empty for the sentence-transformers path)."""
        return self._documents.times.as_dict() if self._documents is not None else {}

    @property
    def uses_pipeline(self) -> bool:
        """True when documents go through `trident_search.encoders.pipeline` (any model it knows)."""
        return self._build_documents is not None

    @property
    def name(self) -> str:
        """Model name to record in a manifest; passing it back as ``model=`` loads the same weights."""
        return self._source.name

    @property
    def revision(self) -> str:
        """Content pin of the weights (``<dist>==<version>``, a hub commit, or ``sha256:...``)."""
        return self._source.revision
