"""The one error root. Every error Trident raises on purpose is a :class:`TridentError`.

The classes carry no HTTP status: the HTTP shell maps them to codes in one table
(``trident_search.service.errors``), the CLI prints their message, and Python users catch
``TridentError``. ``field`` names the input at fault (a request field path, a CLI option).
"""
from __future__ import annotations


class TridentError(Exception):
    """Base class; ``message`` says what went wrong and how to fix it."""

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequestError(TridentError, ValueError):
    """A well-formed request that asks for something impossible (names ``field``)."""


class NotFoundError(TridentError, LookupError):
    """A document id the index does not hold."""


class NotReadyError(TridentError):
    """No index is loaded (missing, damaged or still loading); the message says how to fix it."""


class OverloadedError(TridentError):
    """More work than the server admits right now; retry later."""


class IndexLoadError(TridentError):
    """An index directory that cannot be opened: missing, incomplete, damaged or of another version."""
