"""Typed errors of the encoders package, so callers (build job, service, CLI) can map them to messages."""

from __future__ import annotations

from trident_search.errors import TridentError


class EncoderError(TridentError):
    """Base class for every error raised by `encoders`."""


class EncoderConfigError(EncoderError, ValueError):
    """An encoder option is invalid (device, backend, sizes); the message names the option and valid values."""


class ModelLoadError(EncoderError):
    """A model could not be located or loaded; the message names the model and how to make it loadable."""

    def __init__(self, model: str, reason: str, hint: str = "") -> None:
        self.model = model
        self.reason = reason
        self.hint = hint
        message = f"cannot load model {model!r}: {reason.rstrip('. ')}"
        super().__init__(f"{message}. {hint}" if hint else message)
