"""The one place that turns an exception into a status code and message, for every transport.

``status_for(exc)`` returns ``(code, details)`` as a gRPC status code; the gRPC transport
sends it as is and the HTTP transport maps the code to an HTTP status
(``server/http/errors.py``). The rules:

* ``SaeserveError`` subclasses map by their ``.code`` (``InvalidArgument`` ->
  INVALID_ARGUMENT, ``NotFound`` -> NOT_FOUND, ``Unauthenticated`` -> UNAUTHENTICATED,
  ...); their message is returned verbatim, since it names the field and the limit.
* pydantic ``ValidationError`` -> INVALID_ARGUMENT, naming each failing field path.
* Ray's own errors, by class name so this module never imports ray, each with a fixed
  message (theirs name Python classes and paths): ``BackPressureError`` (replica queue
  full) -> RESOURCE_EXHAUSTED; ``RequestCancelledError`` / ``TaskCancelledError`` /
  ``asyncio.CancelledError`` -> CANCELLED; ``GetTimeoutError`` / ``TimeoutError`` ->
  DEADLINE_EXCEEDED; ``DeploymentUnavailableError`` and a dead or unreachable replica
  (``ActorDiedError``, ``ActorUnavailableError``, ``RayActorError``) -> UNAVAILABLE.
* Anything else -> INTERNAL: the exception is logged with a request id, and the caller
  gets only a generic message carrying that id, never a traceback.

Exceptions raised in another replica arrive through a Ray ``DeploymentHandle`` as
``RayTaskError(InvalidArgument)``: an instance of the original class whose ``str()`` is
the remote traceback. ``status_for`` reads the original from ``.cause``, so the caller sees
the engine's message, not Ray's traceback.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import NamedTuple

import grpc
from pydantic import ValidationError

from saeserve.errors import SaeserveError

logger = logging.getLogger(__name__)

MAX_DETAILS_CHARS = 2000
"""Status details travel in HTTP/2 trailers (8 KiB by default); longer ones are cut."""

_UNAVAILABLE = "the model replica is unavailable (restarting or overloaded); retry shortly"
_BY_CLASS_NAME: dict[str, tuple[grpc.StatusCode, str]] = {
    "BackPressureError": (grpc.StatusCode.RESOURCE_EXHAUSTED, "the request queue is full"),
    "RequestCancelledError": (grpc.StatusCode.CANCELLED, "the call was cancelled"),
    "TaskCancelledError": (grpc.StatusCode.CANCELLED, "the call was cancelled"),
    "GetTimeoutError": (grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed"),
    "DeploymentUnavailableError": (grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE),
    "ActorDiedError": (grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE),
    "ActorUnavailableError": (grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE),
    "RayActorError": (grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE),
}
"""Ray (Serve) exceptions by class name, matched along the MRO, with the message to send."""


class RpcStatus(NamedTuple):
    """A status code with the details string the caller will see."""

    code: grpc.StatusCode
    details: str
    retry_after_s: float | None = None
    """When a retry may succeed (RESOURCE_EXHAUSTED from a rate limit); HTTP Retry-After."""


def original(exc: BaseException) -> BaseException:
    """The exception a remote Ray task raised, or ``exc`` itself when not wrapped (Ray may
    wrap more than once: ``RayTaskError.cause`` is followed a few levels)."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError.cause
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def _code_of(error: SaeserveError) -> grpc.StatusCode | None:
    code = getattr(grpc.StatusCode, error.code, None)
    ok = isinstance(code, grpc.StatusCode) and code not in (
        grpc.StatusCode.OK,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    )
    return code if ok else None


def _validation_details(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "request"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _truncate(text: str) -> str:
    if len(text) <= MAX_DETAILS_CHARS:
        return text
    return text[: MAX_DETAILS_CHARS - 15] + "... [truncated]"


def status_for(exc: BaseException, *, rpc: str = "", request_id: str = "") -> RpcStatus:
    """The status to answer ``exc`` with; logs it when it is INTERNAL (a server bug)."""
    error = original(exc)
    if isinstance(error, SaeserveError) and (code := _code_of(error)) is not None:
        return RpcStatus(code, _truncate(str(error)), getattr(error, "retry_after_s", None))
    if isinstance(error, ValidationError):
        return RpcStatus(grpc.StatusCode.INVALID_ARGUMENT, _truncate(_validation_details(error)))
    if isinstance(error, asyncio.CancelledError):
        return RpcStatus(grpc.StatusCode.CANCELLED, "the call was cancelled")
    for cls in type(error).__mro__:
        if (mapped := _BY_CLASS_NAME.get(cls.__name__)) is not None:
            return RpcStatus(*mapped)
    if isinstance(error, TimeoutError):
        return RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
    request_id = request_id or uuid.uuid4().hex[:16]
    logger.error("internal error in %s (request id %s)", rpc or "rpc", request_id, exc_info=error)
    return RpcStatus(
        grpc.StatusCode.INTERNAL,
        f"internal server error (request id {request_id}); please report it",
    )
