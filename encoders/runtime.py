"""Device choice and a scoped torch thread count, with no process-wide changes left behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from trident_search.encoders.errors import EncoderConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """Map ``auto``/``cpu``/``cuda``/``cuda:N`` to a concrete torch device string."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EncoderConfigError(
                f"device={device!r} was requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        return device
    raise EncoderConfigError(f"unknown device {device!r}; valid values: {', '.join(DEVICES)} or 'cuda:N'")


def check_threads(threads: int | None) -> int | None:
    """Validate a thread count option (None keeps the library default)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise EncoderConfigError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` intra-op torch threads and restore the previous count afterwards.

    torch's thread count is process-wide, so it is set only around our own calls instead of at import time.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def set_max_length(model: torch.nn.Module, max_length: int) -> None:
    """Apply ``max_length``, refusing lengths beyond the model's position embeddings."""
    limit = getattr(model.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < max_length:
        raise EncoderConfigError(f"max_length={max_length} exceeds this model's limit of {limit} tokens")
    model.max_seq_length = max_length


def check_positive(*, allow_none: bool = False, **options: int | None) -> None:
    """Refuse non-positive (or non-integer) size options, naming the option."""
    for option, value in options.items():
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EncoderConfigError(f"{option} must be a positive integer, got {value!r}")


BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def check_backend(backend: str) -> str:
    """Validate the backend option (``auto``: int8 ONNX documents on CPU, torch on a GPU; torch queries)."""
    if backend not in BACKENDS:
        raise EncoderConfigError(f"unknown backend {backend!r}; valid values: {', '.join(BACKENDS)}")
    return backend


def check_precision(precision: str, device: str) -> str:
    """Validate the document precision option.

    ``auto``: int8 for ONNX; on a GPU bf16 for dense models and fp32 for SPLADE; fp32 for torch on CPU.
    """
    if precision not in PRECISIONS:
        raise EncoderConfigError(f"unknown precision {precision!r}; valid values: {', '.join(PRECISIONS)}")
    if precision in ("fp16", "bf16") and not device.startswith("cuda"):
        raise EncoderConfigError(
            f"precision={precision!r} needs a CUDA device; on CPU use 'auto' (int8 ONNX) or 'fp32'"
        )
    return precision
