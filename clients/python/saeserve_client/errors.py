"""The one exception the saeserve client raises for a failed call: ``SaeserveError``.

Every gRPC failure (a status from the server, a deadline passed on the client, a server
that cannot be reached) surfaces as a ``SaeserveError`` carrying the gRPC status code,
the server's message and the call's trailing metadata, so callers catch one type and
branch on ``err.code`` (a ``grpc.StatusCode``) or ``err.code_name`` (``"NOT_FOUND"``).
Mistakes made before any call is sent (both a prompt and messages, say) raise
``ValueError`` instead.
"""

from __future__ import annotations

import grpc


class SaeserveError(Exception):
    """A saeserve RPC ended with a non-OK status.

    Attributes:
        code: the gRPC status code, e.g. ``grpc.StatusCode.INVALID_ARGUMENT``.
        message: the server's message, e.g. ``"decompose.top_k: 900 > limit 256"``.
        details: the call's trailing metadata as ``(key, value)`` pairs (binary values
            for ``-bin`` keys, such as ``grpc-status-details-bin``); empty when none.
        method: the RPC that failed, e.g. ``"Decompose"``; empty when unknown.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        details: tuple[tuple[str, str | bytes], ...] = (),
        method: str = "",
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.method = method

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``"UNAVAILABLE"``."""
        return self.code.name

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, method: str = "") -> SaeserveError:
        """Wrap a grpc error (sync or asyncio call) without losing code, message or metadata."""
        code_fn = getattr(error, "code", None)
        code = code_fn() if callable(code_fn) else None
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        details_fn = getattr(error, "details", None)
        message = details_fn() if callable(details_fn) else None
        trailing_fn = getattr(error, "trailing_metadata", None)
        trailing = trailing_fn() if callable(trailing_fn) else None
        pairs = tuple((str(k), v) for k, v in (trailing or ()))
        return cls(code, message or str(error) or code.name, details=pairs, method=method)

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the exception picklable (multiprocessing, Ray) despite keyword-only fields.
        return (_rebuild, (self.code.name, self.message, self.details, self.method))


def _rebuild(
    code_name: str, message: str, details: tuple[tuple[str, str | bytes], ...], method: str
) -> SaeserveError:
    return SaeserveError(grpc.StatusCode[code_name], message, details=details, method=method)
