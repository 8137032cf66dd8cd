"""The engine's exception hierarchy; the server maps each class to one gRPC status code.

Messages name the offending field and the limit, e.g.
``InvalidArgument("interventions[0].feature: 70000 >= d_sae 65536")``, because they are
returned verbatim to the caller.
"""

from __future__ import annotations


class SaeserveError(Exception):
    """Base class of every error the engine raises on purpose."""

    code: str = "UNKNOWN"


class InvalidArgument(SaeserveError, ValueError):
    """A field is malformed or outside its limit (gRPC INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class NotFound(SaeserveError, KeyError):
    """An unknown model, SAE, hook point or feature (gRPC NOT_FOUND)."""

    code = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ResourceExhausted(SaeserveError):
    """A queue, capacity or rate limit was hit (gRPC RESOURCE_EXHAUSTED); ``retry_after_s``
    says when a retry may succeed, when known; ``reason`` labels the refusal in metrics."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, reason: str = "queue_full"
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class FailedPrecondition(SaeserveError):
    """The request is valid but the server is not in a state to run it (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


def require(condition: bool, message: str) -> None:
    """Raise InvalidArgument(message) unless condition holds."""
    if not condition:
        raise InvalidArgument(message)
