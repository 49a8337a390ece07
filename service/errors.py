"""Domain exceptions of the service, each carrying the HTTP status and error code it maps to.

The engine raises these without knowing about HTTP; ``trident_search.service.app`` turns every one of them into
the same JSON envelope in a single handler, so a status code is decided in exactly one place.
"""
from __future__ import annotations


class TridentError(Exception):
    """Base class: ``status`` and ``code`` for the HTTP envelope, ``field`` names the input at fault."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequestError(TridentError):
    """A request that is well-formed JSON but asks for something impossible (names ``field``)."""

    status = 422
    code = "invalid_request"


class NotFoundError(TridentError):
    """A document id the index does not hold."""

    status = 404
    code = "not_found"


class NotReadyError(TridentError):
    """No index is loaded (missing, damaged or still loading); the message says how to fix it."""

    status = 503
    code = "not_ready"


class AuthenticationError(TridentError):
    """No API key was sent although the server requires one."""

    status = 401
    code = "unauthenticated"


class PermissionDeniedError(TridentError):
    """An API key was sent but it is not the configured one."""

    status = 403
    code = "forbidden"


class PayloadTooLargeError(TridentError):
    """A request body over ``max_body_bytes``."""

    status = 413
    code = "payload_too_large"


class IndexLoadError(TridentError):
    """An index directory that cannot be loaded: missing, incomplete or of another format version."""

    status = 503
    code = "index_unavailable"
