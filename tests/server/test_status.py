"""Exceptions to gRPC status codes: every SaeserveError code, validation, Ray's, INTERNAL.

Ends with real grpc servers (sync and asyncio) on port 0 whose handlers raise, called
through a channel, so the code and details a client sees are the ones checked.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures
from typing import TypeAlias

import grpc
import pytest
from pydantic import BaseModel, Field, ValidationError

from saeserve.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SaeserveError,
)
from saeserve.server.auth import Unauthenticated
from saeserve.server.status import MAX_DETAILS_CHARS, RpcStatus, original, status_for

Code: TypeAlias = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("top_k: 900 > limit 256"), Code.INVALID_ARGUMENT),
        (NotFound("model: unknown model 'x'"), Code.NOT_FOUND),
        (ResourceExhausted("queue full"), Code.RESOURCE_EXHAUSTED),
        (FailedPrecondition("no chat template"), Code.FAILED_PRECONDITION),
        (Unauthenticated("invalid API key"), Code.UNAUTHENTICATED),
    ],
)
def test_saeserve_errors_map_by_code_with_their_message(error: SaeserveError, code: Code) -> None:
    assert status_for(error) == RpcStatus(code, str(error))
    assert str(error) in status_for(error).details  # NotFound is not quoted like KeyError


class _Limits(BaseModel):
    top_k: int = Field(le=256)
    texts: list[str]


def test_validation_error_names_the_field_path() -> None:
    with pytest.raises(ValidationError) as info:
        _Limits.model_validate({"top_k": 900, "texts": ["a", 3]})
    code, details, _ = status_for(info.value)
    assert code is Code.INVALID_ARGUMENT
    assert "top_k:" in details and "texts.1:" in details
    assert "256" in details


class _Traceback(Exception):
    """Stands in for ray.exceptions.RayTaskError: str() is the remote traceback."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("Traceback (most recent call last): ... secret internals")
        self.cause = cause


def test_ray_wrapped_errors_report_the_original_message() -> None:
    inner = InvalidArgument("texts: at least one text is required")
    wrapped = _Traceback(inner)
    assert original(wrapped) is inner
    assert original(_Traceback(wrapped)) is inner  # wrapped twice (a replica calling one)
    assert status_for(wrapped) == RpcStatus(Code.INVALID_ARGUMENT, str(inner))


def test_ray_serve_errors_by_class_name() -> None:
    class BackPressureError(Exception):
        pass

    class GetTimeoutError(TimeoutError):
        pass

    class RequestCancelledError(Exception):
        pass

    class DeploymentUnavailableError(Exception):
        pass

    class MyBackPressure(BackPressureError):  # matched along the MRO
        pass

    class RayActorError(Exception):
        pass

    class ActorDiedError(RayActorError):
        pass

    class ActorUnavailableError(RayActorError):
        pass

    assert status_for(MyBackPressure("queue of 256 full")).code is Code.RESOURCE_EXHAUSTED
    assert status_for(GetTimeoutError()).code is Code.DEADLINE_EXCEEDED
    assert status_for(RequestCancelledError("r1")).code is Code.CANCELLED
    assert status_for(DeploymentUnavailableError("down")).code is Code.UNAVAILABLE
    assert status_for(ActorDiedError("/srv/secret died")) == RpcStatus(
        Code.UNAVAILABLE, status_for(DeploymentUnavailableError("x")).details
    )
    assert "secret" not in status_for(ActorUnavailableError("/srv/secret")).details
    assert status_for(BackPressureError("a class name")).details == "the request queue is full"
    assert status_for(asyncio.CancelledError()).code is Code.CANCELLED
    assert status_for(TimeoutError()).code is Code.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom at /srv/secret/path"), ValueError("a bug"), SaeserveError("no code")],
)
def test_anything_else_is_internal_logged_with_a_request_id(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="saeserve.server.status"):
        code, details, _ = status_for(error, rpc="Decompose")
    assert code is Code.INTERNAL
    assert str(error) not in details and "request id" in details
    request_id = details.split("request id ")[1].split(")")[0]
    (record,) = caplog.records
    assert request_id in record.getMessage() and "Decompose" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is error


def test_long_messages_are_cut() -> None:
    details = status_for(InvalidArgument("x" * 10_000)).details
    assert len(details) == MAX_DETAILS_CHARS and details.endswith("[truncated]")


# --- real servers ---------------------------------------------------------------------
ERRORS: dict[str, BaseException] = {
    "invalid": InvalidArgument("decompose.top_k: 900 > limit 256"),
    "auth": Unauthenticated("invalid API key"),
    "bug": RuntimeError("secret internals"),
}


def _identity(data: bytes) -> bytes:
    return data


def _sync_handler(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(*status_for(ERRORS[request.decode()], rpc="Test")[:2])


async def _aio_handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(*status_for(ERRORS[request.decode()], rpc="Test")[:2])
    raise AssertionError("abort returned")


def _generic(handler: object) -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=_identity, response_serializer=_identity
    )
    return grpc.method_handlers_generic_handler("test.Errors", {"Raise": method})


def _call(port: int, which: str) -> tuple[Code, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raise_ = channel.unary_unary("/test.Errors/Raise")
        with pytest.raises(grpc.RpcError) as info:
            raise_(which.encode(), timeout=10)
    return info.value.code(), info.value.details()


def _check(port: int) -> None:
    assert _call(port, "invalid") == (Code.INVALID_ARGUMENT, "decompose.top_k: 900 > limit 256")
    assert _call(port, "auth") == (Code.UNAUTHENTICATED, "invalid API key")
    code, details = _call(port, "bug")
    assert code is Code.INTERNAL and "secret" not in details and "request id" in details


def test_sync_server_sends_the_mapped_status() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_generic(_sync_handler),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _check(port)
    finally:
        server.stop(None)


def test_aio_server_sends_the_mapped_status() -> None:
    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_generic(_aio_handler),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await asyncio.to_thread(_check, port)
        finally:
            await server.stop(None)

    asyncio.run(main())
