"""The HTTP side of errors: the one table from error class to status and code, and the envelope.

The core raises :class:`~trident_search.errors.TridentError` subclasses that know nothing of HTTP;
``trident_search.service.app`` turns every error into :class:`ErrorResponse` through :func:`status_of`.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from trident_search.errors import (
    IndexLoadError,
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    TridentError,
)


class AuthenticationError(TridentError):
    """No API key was sent although the server requires one."""


class PermissionDeniedError(TridentError):
    """An API key was sent but it is not the configured one."""


class PayloadTooLargeError(TridentError):
    """A request body over ``max_body_bytes``."""


# Most specific first: the first class an error is an instance of decides.
STATUS: list[tuple[type[TridentError], int, str]] = [
    (InvalidRequestError, 422, "invalid_request"),
    (NotFoundError, 404, "not_found"),
    (AuthenticationError, 401, "unauthenticated"),
    (PermissionDeniedError, 403, "forbidden"),
    (PayloadTooLargeError, 413, "payload_too_large"),
    (OverloadedError, 429, "overloaded"),
    (NotReadyError, 503, "not_ready"),
    (IndexLoadError, 503, "index_unavailable"),
    (TridentError, 500, "internal_error"),
]


def status_of(exc: TridentError) -> tuple[int, str]:
    """The HTTP status and error code for a Trident error."""
    return next((status, code) for cls, status, code in STATUS if isinstance(exc, cls))


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = Field(None, description="Dotted path of the request field at fault, if one is.")
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The one envelope every 4xx/5xx answer uses."""

    error: ErrorBody
