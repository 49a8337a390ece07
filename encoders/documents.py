"""Document encoders behind `SparseEncoder.encode_documents` / `DenseEncoder.encode_documents`.

Two runners share `trident_search.encoders.pipeline` (prefetched tokenisation, length buckets, dynamic padding):

* `OnnxDocumentRunner`: the int8 per-channel ONNX Runtime graph (pooling inside the graph) on every CPU core;
  the default on CPU.
* `TorchDocumentRunner`: the transformer in torch, fp32 on CPU, fp16/bf16 autocast on a GPU, with the pooling
  (SPLADE masked max + log1p/ReLU, or mean/CLS + L2 norm) and the SPLADE top-k on the device, so only the
  kept (term, weight) pairs or the final vectors cross to the host.

Both return `Encoded` pieces that the encoders turn into their public types (CSR rows or a dense array).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from trident_search.encoders.pipeline import Batch, StageTimes, batches, inverse_order

# Padded tokens per batch. CPU: the SPLADE logits buffer (tokens x vocab floats) must stay cache-friendly;
# GPU: large enough to fill the device, small enough for the (tokens x 30522) fp16 logits (4 GB at 64k).
CPU_TOKEN_BUDGET = 2048
GPU_TOKEN_BUDGET = 65536
GPU_MAX_BATCH = 2048
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_count() -> int:
    """Cores this process may run on (affinity-aware, so `taskset -c 0,1` means 2)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Collector:
    """Gathers per-batch results (sparse CSR pieces or dense rows) and restores input order."""

    def __init__(self, sparse: bool, width: int) -> None:
        self.sparse = sparse
        self.width = width
        self.positions: list[np.ndarray] = []
        self.parts: list[Any] = []

    def add_dense(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Dense rows (B, width); for SPLADE the positive entries are kept as CSR."""
        self.positions.append(positions)
        self.parts.append(dense_to_csr(rows) if self.sparse else np.asarray(rows, dtype=np.float32))

    def add_csr(self, positions: np.ndarray, counts: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        indptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        self.positions.append(positions)
        self.parts.append(sp.csr_matrix((values.astype(np.float32, copy=False), cols, indptr),
                                        shape=(len(counts), self.width)))

    def result(self, n: int) -> Any:
        inverse = inverse_order(self.positions, n)
        if self.sparse:
            if not self.parts:
                return sp.csr_matrix((n, self.width), dtype=np.float32)
            stacked = sp.vstack(self.parts, format="csr")
            matrix = stacked[inverse]
            matrix.sort_indices()
            return matrix
        if not self.parts:
            return np.zeros((n, self.width), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(self.parts)[inverse], dtype=np.float32)


def dense_to_csr(rows: np.ndarray) -> sp.csr_matrix:
    """Positive entries of a dense float32 batch as canonical CSR (``np.nonzero`` walks rows in order)."""
    positive = rows > 0
    indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(positive.sum(axis=1), out=indptr[1:])
    row_ids, cols = np.nonzero(positive)
    return sp.csr_matrix((rows[row_ids, cols].astype(np.float32), cols, indptr), shape=rows.shape)


class OnnxDocumentRunner:
    """Documents through the int8 ONNX Runtime graph, in length-bucketed batches on ``threads`` cores."""

    def __init__(self, path: Any, tokenizer: Any, input_names: list[str], *, sparse: bool, width: int,
                 threads: int | None, token_budget: int | None, max_batch: int) -> None:
        from trident_search.encoders.onnx import make_session

        self.threads = threads or cpu_count()
        self.session = make_session(path, self.threads)
        self.tokenizer = tokenizer
        self.input_names = input_names
        self.sparse = sparse
        self.width = width
        self.token_budget = token_budget or CPU_TOKEN_BUDGET
        self.max_batch = max_batch
        self.backend = "onnx-int8"
        self.times = StageTimes()

    def encode(self, texts: Sequence[str]) -> Any:
        times = self.times = StageTimes(docs=len(texts))
        began = time.perf_counter()
        out = _Collector(self.sparse, self.width)
        for batch in batches(texts, self.tokenizer, self.input_names, token_budget=self.token_budget,
                             max_batch=self.max_batch, times=times):
            tick = time.perf_counter()
            rows = self.session.run(None, {name: batch.arrays[name] for name in self.input_names})[0]
            tock = time.perf_counter()
            out.add_dense(batch.positions, rows)
            times.model += tock - tick
            times.output += time.perf_counter() - tock
        tick = time.perf_counter()
        result = out.result(len(texts))
        times.output += time.perf_counter() - tick
        times.total = time.perf_counter() - began
        return result


class TorchDocumentRunner:
    """Documents through the torch transformer with on-device pooling (and top-k for SPLADE)."""

    def __init__(self, transformer: torch.nn.Module, tokenizer: Any, input_names: list[str], *, pooling: str,
                 width: int, device: str, precision: str, threads: int | None, token_budget: int | None,
                 max_batch: int, top_k: int | None) -> None:
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.input_names = input_names
        self.pooling = pooling
        self.sparse = pooling == "splade"
        self.width = width
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype = PRECISIONS[precision]
        self.threads = threads
        self.token_budget = token_budget or (GPU_TOKEN_BUDGET if self.cuda else CPU_TOKEN_BUDGET)
        self.max_batch = GPU_MAX_BATCH if self.cuda else max_batch
        self.top_k = top_k
        self.backend = f"torch-{precision}"
        self.times = StageTimes()

    def _to_device(self, batch: Batch) -> Batch:
        """Runs in the prefetch thread: pinned host copy, then an asynchronous copy to the GPU."""
        if self.cuda:
            batch.arrays = {k: torch.from_numpy(v).pin_memory().to(self.device, non_blocking=True)
                            for k, v in batch.arrays.items() if k in self.input_names}
        else:
            batch.arrays = {k: torch.from_numpy(v) for k, v in batch.arrays.items() if k in self.input_names}
        return batch

    def encode(self, texts: Sequence[str]) -> Any:
        from trident_search.encoders.runtime import torch_threads

        times = self.times = StageTimes(docs=len(texts))
        began = time.perf_counter()
        out = _Collector(self.sparse, self.width)
        autocast = (torch.autocast(self.device.type, dtype=self.dtype)
                    if self.dtype != torch.float32 else nullcontext())
        with torch_threads(None if self.cuda else self.threads), torch.inference_mode(), autocast:
            for batch in batches(texts, self.tokenizer, self.input_names, token_budget=self.token_budget,
                                 max_batch=self.max_batch, times=times, prepare=self._to_device):
                tick = time.perf_counter()
                result = self._forward(batch.arrays)
                host = [t.cpu() for t in result]  # waits for the GPU: the model's time ends here
                tock = time.perf_counter()
                if self.sparse:
                    counts, cols, values = (t.numpy() for t in host)
                    out.add_csr(batch.positions, counts, cols, values)
                else:
                    out.add_dense(batch.positions, host[0].numpy())
                times.model += tock - tick
                times.output += time.perf_counter() - tock
        tick = time.perf_counter()
        matrix = out.result(len(texts))
        times.output += time.perf_counter() - tick
        times.total = time.perf_counter() - began
        return matrix

    def _forward(self, arrays: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        output = self.transformer(**arrays)
        mask = arrays["attention_mask"]
        if self.sparse:
            logits = output.logits
            # max_i log1p(relu(x_i)) == log1p(relu(max_i x_i)); padded positions become 0, which relu clips anyway.
            logits.masked_fill_((mask == 0).unsqueeze(-1), 0)
            pooled = torch.log1p(torch.relu(logits.amax(dim=1).float()))
            if self.top_k is not None and self.top_k < pooled.shape[1]:
                values, cols = pooled.topk(self.top_k, dim=1, sorted=False)
                pooled = torch.zeros_like(pooled).scatter_(1, cols, values)
            positive = pooled > 0
            counts = positive.sum(dim=1)
            cols = positive.nonzero()[:, 1]
            return [counts, cols.to(torch.int32), pooled[positive]]
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0].float()
        else:
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return [torch.nn.functional.normalize(pooled, p=2.0, dim=-1)]
