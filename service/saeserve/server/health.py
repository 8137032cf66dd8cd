"""grpc.health.v1 for the ingress's gRPC server: Check, Watch and List, exempt from API keys.

The status is asked of a callable each time (the ingress asks every model replica whether
it is ready), so it is never stale. Known services: "" (the server) and saeserve.v1.Saeserve.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saeserve.v1 import saeserve_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Saeserve"].full_name
SERVICES = ("", SERVICE_NAME)
WATCH_INTERVAL_S = 1.0
"""How often Watch asks for the status; it sends a message only when it changes."""

Status = Callable[[], Awaitable["health_pb2.HealthCheckResponse.ServingStatus"]]


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, status: Status) -> None:
        self.status = status

    async def Check(  # type: ignore[override]
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"health.service: unknown service {request.service!r}"
            )
        return health_pb2.HealthCheckResponse(status=await self.status())

    async def Watch(  # type: ignore[override]
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            if request.service in SERVICES:
                status = await self.status()
            else:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def List(  # type: ignore[override]
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        status = await self.status()
        return health_pb2.HealthListResponse(
            statuses={s: health_pb2.HealthCheckResponse(status=status) for s in SERVICES}
        )
