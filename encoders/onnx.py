"""int8 ONNX Runtime graphs for query encoding: exported once per model, cached on disk, run single-threaded.

Queries sit on the search latency path, where torch's per-call overhead dominates a 10-token input. The graph
contains the pooling, so one `session.run` returns the final vector. Weights are quantised to int8 *per
channel*: per-tensor int8 visibly hurt rankings (DESIGN section 5).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trident_search.encoders.errors import EncoderConfigError, EncoderError
from trident_search.encoders.models import ModelSource

logger = logging.getLogger(__name__)

Pooling = Literal["splade", "mean", "cls"]

FORMAT_VERSION = 3
OPSET = 17
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def cache_root() -> Path:
    """Folder of exported graphs: ``$TRIDENT_CACHE/onnx``, else ``$XDG_CACHE_HOME/trident/onnx`` (~/.cache)."""
    if os.environ.get("TRIDENT_CACHE"):
        return Path(os.environ["TRIDENT_CACHE"]).expanduser() / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trident" / "onnx"


def graph_pooling(model: Any) -> Pooling:
    """The pooling to build into the graph for a sentence-transformers model, or a clear refusal.

    sentence-transformers' own pooling modules branch on tensor shapes in Python, so tracing them freezes the
    sequence length; the graph re-implements the few poolings we support instead.
    """
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    modules = list(model)
    names = [type(module).__name__ for module in modules]
    unsupported = EncoderConfigError(
        f"backend='onnx' supports SPLADE (MLM + max pooling) and mean/CLS-pooled encoders, not the module stack "
        f"{names}; use backend='torch' for this model"
    )
    if len(modules) == 2 and isinstance(modules[1], SpladePooling):
        pooling = modules[1]
        if pooling.pooling_strategy == "max" and pooling.activation_function == "relu":
            return "splade"
    tail = modules[2:]
    if len(modules) >= 2 and isinstance(modules[1], Pooling) and all(isinstance(m, Normalize) for m in tail):
        mode = modules[1].pooling_mode
        if mode in ("mean", "cls"):
            return mode  # type: ignore[return-value]
    raise unsupported


class _PooledGraph(torch.nn.Module):
    """Transformer + pooling as one traceable module: ids in, final vectors out."""

    def __init__(self, transformer: torch.nn.Module, pooling: Pooling) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        output = self.transformer(**inputs)
        if self.pooling == "splade":
            # max_i log1p(relu(x_i)) == log1p(relu(max_i x_i)): both are monotonic, so pool first and apply them
            # once per vocabulary entry; masked positions become 0, which relu clips away anyway.
            mask = attention_mask.unsqueeze(-1).to(output.logits.dtype)
            return torch.log1p(torch.relu((output.logits * mask).amax(dim=1)))
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)


class OnnxQueryModel:
    """A cached int8 ONNX Runtime session plus the tokenizer that feeds it.

    Texts run one at a time: dynamic int8 quantisation scales activations per call, so batching would make a
    query's vector depend on its batch neighbours.
    """

    def __init__(self, session: Any, tokenizer: Any, input_names: list[str], max_length: int) -> None:
        self._session = session
        self._tokenizer = _fast_tokenizer(tokenizer, max_length)
        self._input_names = input_names
        self._width = session.get_outputs()[0].shape[-1]

    @classmethod
    def from_sentence_transformers(
        cls, model: Any, source: ModelSource, *, max_length: int, threads: int | None
    ) -> OnnxQueryModel:
        """Load the cached graph for ``model`` (exporting and quantising it on first use)."""
        graph = cached_graph(model, source)
        return cls(make_session(graph.path, threads or 1), model.tokenizer, graph.input_names, max_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors of ``texts``, float32 ``(n, dim)``."""
        rows = [self._run(text) for text in texts]
        return np.vstack(rows) if rows else np.zeros((0, self._width), dtype=np.float32)

    def _run(self, text: str) -> np.ndarray:
        encoding = self._tokenizer.encode(text)
        arrays = {
            "input_ids": encoding.ids,
            "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids,
        }
        feed = {name: np.asarray([arrays[name]], dtype=np.int64) for name in self._input_names}
        return self._session.run(None, feed)[0].astype(np.float32, copy=False)


@dataclass(frozen=True)
class CachedGraph:
    """An exported int8 graph on disk: its file, its inputs, the pooling inside it."""

    path: Path
    input_names: list[str]
    pooling: Pooling


def cached_graph(model: Any, source: ModelSource) -> CachedGraph:
    """The cached int8 graph of ``model`` (exported and quantised on first use).

    Queries and documents share it: both axes (batch and sequence) are dynamic.
    """
    pooling = graph_pooling(model)
    sample = model.tokenizer(["export sample"], return_tensors="np")
    input_names = [name for name in INPUT_NAMES if name in sample]
    folder = cache_root() / _cache_key(source, pooling, input_names)
    if not (folder / MODEL_FILE).is_file():
        try:
            _export(model, source, pooling, input_names, folder)
        except OSError as exc:
            raise EncoderError(
                f"cannot write the ONNX export of {source.name!r} under {folder.parent}: {exc}; "
                "set TRIDENT_CACHE to a writable folder or use backend='torch'"
            ) from exc
    return CachedGraph(folder / MODEL_FILE, input_names, pooling)


def fast_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """Public name of `_fast_tokenizer` (the document pipeline tokenises with it too)."""
    return _fast_tokenizer(tokenizer, max_length)


def _fast_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """A private copy of the Rust tokenizer behind ``tokenizer``, truncating and never padding.

    Calling it directly costs a fraction of the transformers wrapper, which matters at ~1 ms per query;
    the copy keeps the truncation setting away from the torch path's tokenizer.
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EncoderConfigError("backend='onnx' needs a fast (Rust) tokenizer; use backend='torch' for this model")
    private = Tokenizer.from_str(backend.to_str())
    private.enable_truncation(max_length)
    private.no_padding()
    return private


def _cache_key(source: ModelSource, pooling: Pooling, input_names: list[str]) -> str:
    """Hash of everything the exported file depends on, so a changed model or toolchain re-exports."""
    import onnxruntime

    identity = {
        "format": FORMAT_VERSION,
        "name": source.name,
        "revision": source.revision,
        "pooling": pooling,
        "inputs": input_names,
        "opset": OPSET,
        "quantization": "dynamic-int8-per-channel",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _export(model: Any, source: ModelSource, pooling: Pooling, input_names: list[str], folder: Path) -> None:
    """Export + quantise into a temporary sibling folder and rename it into place (atomic for readers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if source.revision == "unknown":
        raise EncoderError(f"cannot cache an ONNX export of {source.name!r}: its revision is unknown")
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not (folder / MODEL_FILE).is_file():
        shutil.rmtree(folder)  # a folder without its model file is a leftover, never a finished export
    logger.info("exporting %s to ONNX (int8, per-channel) under %s", source.name, folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        transformer = copy.deepcopy(model[0].model).float().cpu().eval()
        graph = _PooledGraph(transformer, pooling)
        sample = model.tokenizer(["a short sample query", "x"], padding=True, return_tensors="pt")
        args = tuple(sample[name] for name in input_names)
        axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
        fp32 = staging / "model.fp32.onnx"
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python branches that pooling never takes
            torch.onnx.export(
                graph,
                args,
                str(fp32),
                input_names=input_names,
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        # Graph fusions before quantising make the int8 graph ~15% faster with identical outputs; symbolic shape
        # inference is skipped because it cannot resolve the dynamic sequence axis of these graphs.
        optimized = staging / "model.opt.onnx"
        # The quantizer logs ~70 INFO lines (root logger); the export is announced once, above.
        disabled = logging.root.manager.disable
        logging.disable(logging.INFO)
        try:
            quant_pre_process(str(fp32), str(optimized), skip_symbolic_shape=True)
            quantize_dynamic(str(optimized), str(staging / MODEL_FILE), per_channel=True, weight_type=QuantType.QInt8)
        finally:
            logging.disable(disabled)
        fp32.unlink()
        optimized.unlink()
        meta = {"name": source.name, "revision": source.revision, "pooling": pooling, "inputs": input_names,
                "opset": OPSET, "quantization": "dynamic-int8-per-channel"}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared (e.g. a service user)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / MODEL_FILE).is_file():  # another process finishing first is fine; anything else is not
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_session(path: Path, threads: int) -> Any:
    """A CPU session with ``threads`` intra-op threads (1 for queries: single queries don't gain from more;
    every core for document batches)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
