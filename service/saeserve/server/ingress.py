"""The ingress deployment: one replica serves both transports over one ``Operations``.

Each ingress replica runs its own grpc.aio server (``grpc_server.py``) on the replica's
event loop, on ``settings.grpc_port`` (with several ingress replicas, ``SO_REUSEPORT``
lets those on one node share the port), and is Ray Serve's HTTP ingress (``serve.ingress``; the FastAPI app of
``http/app.py``, served by Serve's HTTP proxy on ``settings.http_port``). Serving gRPC here
rather than through Ray Serve's gRPC proxy saves a process hop per call and per streamed
message, and makes a client's cancel reach the model replica every time
(docs/notes-ray-grpc.md). The operations (``operations.py``) hold the auth, limits,
batching, metrics and error model; the replicas (``replica.py``) and the engine do the work.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from grpc_health.v1 import health_pb2
from ray.serve.handle import DeploymentHandle

from saeserve.server.grpc_server import build_grpc_server
from saeserve.server.health import Health
from saeserve.server.http.app import build_http_app
from saeserve.server.operations import Operations
from saeserve.server.settings import ServerSettings


class SaeserveIngress:
    def __init__(self, settings: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        self.settings = ServerSettings.model_validate(settings)
        self.ops = Operations(self.settings, models)
        self.server = build_grpc_server(
            self.ops,
            Health(self._serving_status),
            host=self.settings.host,
            port=self.settings.grpc_port,
            max_message_bytes=self.settings.max_message_bytes,
            max_request_bytes=self.settings.max_request_bytes,
            reuse_port=self.settings.ingress_replicas > 1,
        )
        self._started = asyncio.get_running_loop().create_task(self.server.start())

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray Serve's hook for a late-bound HTTP app (``serve.ingress()``)."""
        return build_http_app(self.ops, self.settings)

    async def check_health(self) -> None:
        """Ray Serve's replica health check: the gRPC server must have started."""
        if self._started.done() and (error := self._started.exception()) is not None:
            raise error

    async def __del__(self) -> None:
        await self.server.stop(grace=5.0)
        shutdown = getattr(super(), "__del__", None)  # Serve's ASGI wrapper ends its lifespan
        if shutdown is not None:
            await shutdown()

    async def _serving_status(self) -> health_pb2.HealthCheckResponse.ServingStatus:
        if await self.ops.serving():
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING
