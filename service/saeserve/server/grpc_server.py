"""The gRPC transport: saeserve.v1's methods over ``Operations``, and the grpc.aio server an
ingress replica runs with them, grpc.health.v1 and reflection.

Each method only translates: it hands the request message and the call's metadata to its
operation and sends the operation's status on failure. Requests are parsed here rather
than by grpc's generated deserializers, so a malformed message (truncated, garbage, a
string that is not UTF-8) is INVALID_ARGUMENT, not an UNKNOWN naming a Python class.
``SO_REUSEPORT`` is on only when several ingress replicas are configured (those on one node
share the port and the kernel spreads connections among them); otherwise a second process
cannot silently take half of the port's connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from saeserve.server.health import SERVICE_NAME as SAESERVE_SERVICE
from saeserve.server.operations import Caller, OperationFailed, Operations
from saeserve.server.status import RpcStatus
from saeserve.v1 import saeserve_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Saeserve"]

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

SERVICE_NAMES = (
    SAESERVE_SERVICE,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)


def _caller(context: Context) -> Caller:
    return Caller("grpc", context.invocation_metadata())


def _generate(ops: Operations) -> Handler:
    """Generate, written with ``context.write`` rather than as an async generator: when the
    client cancels (or its deadline passes), grpc cancels this coroutine wherever it
    waits, and ``aclosing`` then closes the operation's stream, which stops generation."""

    async def generate(request: pb.GenerateRequest, context: Context) -> None:
        groups = ops.generate(request, _caller(context))
        async with contextlib.aclosing(groups):
            async for group in groups:
                for chunk in group:
                    await context.write(chunk)

    return generate


def _unary(operation: Callable[[Any, Caller], Awaitable[Any]]) -> Handler:
    async def call(request: Any, context: Context) -> Any:
        return await operation(request, _caller(context))

    return call


Handler = Callable[[Any, Context], Awaitable[Any]]


def _answering(method: Handler, request_type: type[Message], max_bytes: int) -> Handler:
    """``method`` taking the raw request bytes, with its failures sent as statuses:
    INVALID_ARGUMENT when there are more than ``max_bytes`` (before parsing) or they do not
    parse, the operation's status when it fails.

    The status is sent from a frame that no longer holds the request: grpc.aio keeps an
    aborted call's exception, and with it every frame its traceback passes through, so a
    refused 50 MiB request aborted deep inside would stay in memory."""

    async def answer(data: bytes, context: Context) -> tuple[Any, RpcStatus | None]:
        if len(data) > max_bytes:
            return None, RpcStatus(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request: {len(data)} bytes > limit {max_bytes} (max_request_bytes)",
            )
        try:
            request = request_type.FromString(data)
        except DecodeError:
            return None, RpcStatus(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request: not a valid {request_type.DESCRIPTOR.full_name} message "
                "(malformed protobuf, or a string field that is not UTF-8)",
            )
        try:
            return await method(request, context), None
        except OperationFailed as failed:
            return None, failed.status

    async def handler(data: bytes, context: Context) -> Any:
        response, failure = await answer(data, context)
        del data
        if failure is not None:
            await context.abort(failure.code, failure.details)
        return response

    return handler


def method_handlers(ops: Operations, max_request_bytes: int) -> grpc.GenericRpcHandler:
    """saeserve.v1.Saeserve: each method parses its own request, calls its operation and
    sends the operation's failure as its status (a thin adapter: ``OperationFailed``
    carries the status)."""
    methods: dict[str, Handler] = {
        "ListModels": _unary(ops.list_models),
        "Tokenize": _unary(ops.tokenize),
        "Decompose": _unary(ops.decompose),
        "GetFeature": _unary(ops.get_feature),
        "SearchFeatures": _unary(ops.search_features),
        "Generate": _generate(ops),
        "Attribute": _unary(ops.attribute),
        "AttributeFeature": _unary(ops.attribute_feature),
        "InspectFeatures": _unary(ops.inspect_features),
        "ContrastFeatures": _unary(ops.contrast_features),
    }
    handlers = {}
    for m in SERVICE.methods:
        request_type = getattr(pb, m.input_type.name)
        respond = getattr(pb, m.output_type.name).SerializeToString
        answering = _answering(methods[m.name], request_type, max_request_bytes)
        make = (
            grpc.unary_stream_rpc_method_handler
            if m.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[m.name] = make(answering, response_serializer=respond)
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


def bind_address(host: str, port: int) -> str:
    """``host:port`` as grpc wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def build_grpc_server(
    ops: Operations,
    health_servicer: health_pb2_grpc.HealthServicer,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    max_request_bytes: int,
    reuse_port: bool,
) -> grpc.aio.Server:
    """A server with saeserve.v1 and health bound to ``host:port``, not yet started.

    RuntimeError if the port cannot be bound (grpc reports that as port 0), e.g. when
    another process holds it and ``reuse_port`` is off.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    server.add_generic_rpc_handlers((method_handlers(ops, max_request_bytes),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    address = bind_address(host, port)
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"grpc_port: cannot bind {address}")
    return server
