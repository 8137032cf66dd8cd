"""The one place that turns an exception into a gRPC status code and message.

``status_for(exc)`` decides, returning ``(code, details)``; ``set_status`` / ``abort`` / ``abort_aio`` apply it to a
context (grpc sync, grpc.aio, or Ray Serve's ``RayServegRPCContext``, which all have
``set_code`` / ``set_details``). The rules:

* ``SaeserveError`` subclasses map by their ``.code`` (``InvalidArgument`` ->
  INVALID_ARGUMENT, ``NotFound`` -> NOT_FOUND, ``Unauthenticated`` -> UNAUTHENTICATED,
  ...); their message is returned verbatim, since it names the field and the limit.
* pydantic ``ValidationError`` -> INVALID_ARGUMENT, naming each failing field path.
* Ray Serve's own errors, by class name so this module never imports ray:
  ``BackPressureError`` (replica queue full) -> RESOURCE_EXHAUSTED,
  ``RequestCancelledError`` / ``TaskCancelledError`` / ``asyncio.CancelledError`` ->
  CANCELLED, ``TimeoutError`` / ``GetTimeoutError`` -> DEADLINE_EXCEEDED,
  ``DeploymentUnavailableError`` -> UNAVAILABLE.
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
from typing import NamedTuple, NoReturn, Protocol

import grpc
from pydantic import ValidationError

from saeserve.errors import SaeserveError

logger = logging.getLogger(__name__)

MAX_DETAILS_CHARS = 2000
"""Status details travel in HTTP/2 trailers (8 KiB by default); longer ones are cut."""

_BY_CLASS_NAME: dict[str, grpc.StatusCode] = {
    "BackPressureError": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "RequestCancelledError": grpc.StatusCode.CANCELLED,
    "TaskCancelledError": grpc.StatusCode.CANCELLED,
    "GetTimeoutError": grpc.StatusCode.DEADLINE_EXCEEDED,
    "DeploymentUnavailableError": grpc.StatusCode.UNAVAILABLE,
}
"""Ray (Serve) exceptions by class name; matched along the MRO."""


class RpcStatus(NamedTuple):
    """A status code with the details string the caller will see."""

    code: grpc.StatusCode
    details: str


class StatusContext(Protocol):
    """What every servicer context (grpc, grpc.aio, Ray Serve's) lets us set."""

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...


def original(exc: BaseException) -> BaseException:
    """The exception a remote Ray task raised, or ``exc`` itself when not wrapped."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError.cause
    return cause if isinstance(cause, BaseException) and cause is not exc else exc


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
        return RpcStatus(code, _truncate(str(error)))
    if isinstance(error, ValidationError):
        return RpcStatus(grpc.StatusCode.INVALID_ARGUMENT, _truncate(_validation_details(error)))
    if isinstance(error, asyncio.CancelledError):
        return RpcStatus(grpc.StatusCode.CANCELLED, "the call was cancelled")
    for cls in type(error).__mro__:
        if (mapped := _BY_CLASS_NAME.get(cls.__name__)) is not None:
            return RpcStatus(mapped, _truncate(str(error) or mapped.name.lower()))
    if isinstance(error, TimeoutError):
        return RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
    request_id = request_id or uuid.uuid4().hex[:16]
    logger.error("internal error in %s (request id %s)", rpc or "rpc", request_id, exc_info=error)
    return RpcStatus(
        grpc.StatusCode.INTERNAL,
        f"internal server error (request id {request_id}); please report it",
    )


def set_status(context: StatusContext, exc: BaseException, *, rpc: str = "") -> RpcStatus:
    """Set ``exc``'s status on ``context`` without raising (Ray Serve deployments).

    A Ray Serve ingress then returns an empty response (or ends its stream); Serve's
    proxy sends the code and details that were set.
    """
    status = status_for(exc, rpc=rpc)
    context.set_code(status.code)
    context.set_details(status.details)
    return status


def abort(context: grpc.ServicerContext, exc: BaseException, *, rpc: str = "") -> NoReturn:
    """End a synchronous grpc call with ``exc``'s status (raises, as grpc requires)."""
    status = status_for(exc, rpc=rpc)
    context.abort(status.code, status.details)
    raise AssertionError("grpc.ServicerContext.abort returned")  # pragma: no cover


async def abort_aio(
    context: grpc.aio.ServicerContext, exc: BaseException, *, rpc: str = ""
) -> NoReturn:
    """End a grpc.aio call with ``exc``'s status (raises, as grpc.aio requires)."""
    status = status_for(exc, rpc=rpc)
    await context.abort(status.code, status.details)
    raise AssertionError("grpc.aio.ServicerContext.abort returned")  # pragma: no cover
