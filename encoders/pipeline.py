"""The document encoding pipeline: tokenise, bucket by length, pad per batch, run a model, pool, reassemble.

One pipeline serves every document backend (int8 ONNX Runtime on CPU, torch fp32 on CPU, torch fp16/bf16 on a
GPU); only the ``run`` step differs:

* **Tokenisation** goes through the Rust tokenizer in windows of texts, in a prefetch thread, so it overlaps
  with the model (the Rust batch call releases the GIL and is parallel itself).
* **Length buckets**: inside a window, texts are sorted by token count and cut into batches whose padded size
  (rows x longest row) stays under a token budget, so a batch of short texts holds many rows and one of long
  texts few, and padding is at most a few tokens per row.
* **Dynamic padding** is vectorised (one gather per batch, no Python loop over rows).
* Results come back in input order.

Batches depend only on the texts of the call (and the window and budget settings), never on timing, so a
call's output is deterministic.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Texts tokenised together and sorted by length: larger windows pad less, smaller ones start the model sooner.
WINDOW = 2048


@dataclass
class Batch:
    """Rows ``positions`` of the call's texts, padded to the longest of them."""

    positions: np.ndarray  # int64 (n,): where these rows go in the output
    arrays: dict[str, np.ndarray]  # name -> int64 (n, length)

    @property
    def tokens(self) -> int:
        return int(self.arrays["input_ids"].size)


@dataclass
class StageTimes:
    """Seconds spent per stage of the last call (``tokenize`` runs in the prefetch thread, overlapped)."""

    tokenize: float = 0.0
    wait: float = 0.0  # the model loop waiting for the prefetch thread: tokenisation that did not overlap
    model: float = 0.0
    output: float = 0.0  # host-side conversion (CSR rows, reordering)
    total: float = 0.0
    docs: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items() if k != "extra"}
        out.update({k: round(v, 4) for k, v in self.extra.items()})
        return out


def plan_batches(lengths: np.ndarray, token_budget: int, max_batch: int) -> list[np.ndarray]:
    """Split indices into batches of similar length with ``rows * longest <= token_budget`` (at least one row).

    Longest texts first (the largest batch shapes, hence allocations, come first), ties in input order.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_batch, token_budget // longest, len(order) - start))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class Tokenized:
    """A window of texts as one flat id array plus offsets, so padding a batch is a single gather."""

    def __init__(self, encodings: Sequence[Any], with_types: bool) -> None:
        self.lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        self.offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        total = int(self.offsets[-1])
        self.ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=total)
        self.types = None
        if with_types:
            types = np.fromiter((t for e in encodings for t in e.type_ids), dtype=np.int64, count=total)
            self.types = types if types.any() else None

    def pad(self, rows: np.ndarray, input_names: Sequence[str]) -> dict[str, np.ndarray]:
        lengths = self.lengths[rows]
        width = max(int(lengths.max()), 1)
        mask = np.arange(width)[None, :] < lengths[:, None]
        row_of, col = np.nonzero(mask)
        source = self.offsets[rows][row_of] + col
        ids = np.zeros((len(rows), width), dtype=np.int64)
        ids[row_of, col] = self.ids[source]
        arrays = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in input_names:
            types = np.zeros_like(ids)
            if self.types is not None:
                types[row_of, col] = self.types[source]
            arrays["token_type_ids"] = types
        return arrays


def batches(
    texts: Sequence[str],
    tokenizer: Any,
    input_names: Sequence[str],
    *,
    token_budget: int,
    max_batch: int,
    times: StageTimes,
    window: int = WINDOW,
    prepare: Callable[[Batch], Any] | None = None,
) -> Iterator[Batch]:
    """Padded, length-bucketed batches of ``texts``, produced by a prefetch thread a few batches ahead.

    ``prepare`` runs in the prefetch thread on each batch (e.g. pinning and copying it to a GPU).
    """
    done = object()
    box: queue.Queue[Any] = queue.Queue(maxsize=8)
    stop = threading.Event()
    with_types = "token_type_ids" in input_names

    def produce() -> None:
        try:
            for start in range(0, len(texts), window):
                began = time.perf_counter()
                chunk = list(texts[start : start + window])
                window_tokens = Tokenized(tokenizer.encode_batch(chunk, add_special_tokens=True), with_types)
                times.tokenize += time.perf_counter() - began
                for rows in plan_batches(window_tokens.lengths, token_budget, max_batch):
                    began = time.perf_counter()
                    batch = Batch(rows + start, window_tokens.pad(rows, input_names))
                    times.tokens += int(window_tokens.lengths[rows].sum())
                    times.padded_tokens += batch.tokens
                    item = prepare(batch) if prepare is not None else batch
                    times.tokenize += time.perf_counter() - began
                    while not stop.is_set():
                        try:
                            box.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            box.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            box.put(exc)

    thread = threading.Thread(target=produce, name="trident-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            began = time.perf_counter()
            item = box.get()
            times.wait += time.perf_counter() - began
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            times.batches += 1
            yield item
    finally:
        stop.set()
        thread.join()


def inverse_order(positions: list[np.ndarray], n: int) -> np.ndarray:
    """For rows stacked in batch order, the permutation that puts them back in input order."""
    stacked = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    inverse[stacked] = np.arange(len(stacked))
    return inverse
