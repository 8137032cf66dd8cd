"""The gRPC transport: the saeserve.v1 servicer over ``Operations``, and the grpc.aio server
an ingress replica runs with it, grpc.health.v1 and reflection.

The servicer only translates: it hands each request message and the call's metadata to
the operation and sends the operation's status on failure. ``SO_REUSEPORT`` is on, so
several ingress replicas on one node can bind the same port and the kernel spreads
connections among them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from saeserve.server.health import SERVICE_NAME as SAESERVE_SERVICE
from saeserve.server.operations import Caller, OperationFailed, Operations
from saeserve.v1 import saeserve_pb2 as pb
from saeserve.v1 import saeserve_pb2_grpc

R = TypeVar("R")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

SERVICE_NAMES = (
    SAESERVE_SERVICE,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)


def _caller(context: Context) -> Caller:
    return Caller("grpc", context.invocation_metadata())


async def _abort(context: Context, failed: OperationFailed) -> NoReturn:
    await context.abort(failed.status.code, failed.status.details)
    raise AssertionError("grpc.aio abort returned")  # pragma: no cover


class SaeserveServicer(saeserve_pb2_grpc.SaeserveServicer):
    """saeserve.v1.Saeserve as a thin adapter over ``Operations``."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    async def _answer(self, work: Awaitable[R], context: Context) -> R:
        try:
            return await work
        except OperationFailed as failed:
            await _abort(context, failed)

    async def ListModels(  # type: ignore[override]
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        return await self._answer(self.ops.list_models(_caller(context)), context)

    async def Tokenize(  # type: ignore[override]
        self, request: pb.TokenizeRequest, context: Context
    ) -> pb.TokenizeResponse:
        return await self._answer(self.ops.tokenize(request, _caller(context)), context)

    async def Decompose(  # type: ignore[override]
        self, request: pb.DecomposeRequest, context: Context
    ) -> pb.DecomposeResponse:
        return await self._answer(self.ops.decompose(request, _caller(context)), context)

    async def GetFeature(  # type: ignore[override]
        self, request: pb.GetFeatureRequest, context: Context
    ) -> pb.GetFeatureResponse:
        return await self._answer(self.ops.get_feature(request, _caller(context)), context)

    async def SearchFeatures(  # type: ignore[override]
        self, request: pb.SearchFeaturesRequest, context: Context
    ) -> pb.SearchFeaturesResponse:
        return await self._answer(self.ops.search_features(request, _caller(context)), context)

    async def Generate(  # type: ignore[override]
        self, request: pb.GenerateRequest, context: Context
    ) -> None:
        """Written with ``context.write`` rather than as an async generator: when the client
        cancels (or its deadline passes), grpc cancels this coroutine wherever it waits,
        and ``aclosing`` then closes the operation's stream, which stops the generation."""
        try:
            groups = self.ops.generate(request, _caller(context))
            async with contextlib.aclosing(groups):
                async for group in groups:
                    for chunk in group:
                        await context.write(chunk)
        except OperationFailed as failed:
            await _abort(context, failed)


def bind_address(host: str, port: int) -> str:
    """``host:port`` as grpc wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def build_grpc_server(
    servicer: SaeserveServicer,
    health_servicer: health_pb2_grpc.HealthServicer,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
) -> grpc.aio.Server:
    """A server with both servicers bound to ``host:port``, not yet started.

    RuntimeError if the port cannot be bound (grpc reports that as port 0).
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    saeserve_pb2_grpc.add_SaeserveServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    address = bind_address(host, port)
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"grpc_port: cannot bind {address}")
    return server
