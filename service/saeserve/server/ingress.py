"""The gRPC ingress deployment: one method per RPC of saeserve.v1.Saeserve, plus health.

Ray Serve's gRPC proxy routes each call here by method name. Every RPC goes through one
path (``_call``/``Generate``): API-key check, request conversion and limits, the model
replica's handle, metrics, and the mapping of errors to status codes. The methods hold no
model logic; the replicas (``replica.py``) and the engine do the work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2
from ray.serve.exceptions import BackPressureError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from saeserve.errors import NotFound, ResourceExhausted
from saeserve.server import metrics
from saeserve.server.auth import ApiKeys
from saeserve.server.convert import (
    decompose_from_proto,
    decompose_to_proto,
    generate_from_proto,
    search_limit,
    tokens_to_proto,
)
from saeserve.server.settings import ServerSettings
from saeserve.server.status import status_for
from saeserve.v1 import saeserve_pb2 as pb

log = logging.getLogger(__name__)
R = TypeVar("R")
SERVICE_NAME = "saeserve.v1.Saeserve"


def _unwrap(error: BaseException) -> BaseException:
    """The original exception behind Ray's wrappers (RayTaskError keeps it as .cause)."""
    seen = 0
    while getattr(error, "cause", None) is not None and seen < 8:
        error = error.cause  # type: ignore[attr-defined]
        seen += 1
    if isinstance(error, BackPressureError):
        metrics.REJECTED.labels(reason="queue_full").inc()
        return ResourceExhausted(f"the request queue is full: {error}")
    return error


class StreamFailed(Exception):
    """Raised after a Generate stream's status was set, so the proxy sends that status."""


class SaeserveIngress:
    def __init__(self, settings: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        self.settings = ServerSettings.model_validate(settings)
        self.limits = self.settings.limits
        self.models = models
        self.default_model = self.settings.models[0].name
        self.keys = ApiKeys.from_settings(self.settings)
        if not self.keys.enabled:
            log.warning("saeserve: no API keys configured; the server is open to any caller")

    # --- plumbing ------------------------------------------------------------------------------
    def _model(self, name: str, field: str) -> DeploymentHandle:
        name = name or self.default_model
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(
                f"{field}: unknown model {name!r} (known: {', '.join(self.models)})"
            ) from None

    async def _call(
        self,
        rpc: str,
        ctx: RayServegRPCContext,
        work: Callable[[], Awaitable[R]],
        empty: Callable[[], R],
    ) -> R:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            self.keys.check(ctx.invocation_metadata())
            return await work()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException as e:  # every error becomes a status; the server keeps serving
            code, message = status_for(_unwrap(e))
            ctx.set_code(code)
            ctx.set_details(message)
            return empty()
        finally:
            metrics.observe_request(rpc, code.name, time.perf_counter() - start)

    # --- RPCs ------------------------------------------------------------------------------
    async def ListModels(
        self, request: pb.ListModelsRequest, grpc_context: RayServegRPCContext
    ) -> pb.ListModelsResponse:
        async def work() -> pb.ListModelsResponse:
            infos = await asyncio.gather(*(h.info.remote() for h in self.models.values()))
            return pb.ListModelsResponse(models=infos)

        return await self._call("ListModels", grpc_context, work, pb.ListModelsResponse)

    async def Tokenize(
        self, request: pb.TokenizeRequest, grpc_context: RayServegRPCContext
    ) -> pb.TokenizeResponse:
        async def work() -> pb.TokenizeResponse:
            tokens = await self._model(request.model, "tokenize.model").tokenize.remote(
                request.text
            )
            return pb.TokenizeResponse(tokens=tokens_to_proto(tokens))

        return await self._call("Tokenize", grpc_context, work, pb.TokenizeResponse)

    async def Decompose(
        self, request: pb.DecomposeRequest, grpc_context: RayServegRPCContext
    ) -> pb.DecomposeResponse:
        async def work() -> pb.DecomposeResponse:
            req = decompose_from_proto(request, self.limits)
            result = await self._model(request.model, "decompose.model").decompose.remote(req)
            return decompose_to_proto(result)

        return await self._call("Decompose", grpc_context, work, pb.DecomposeResponse)

    async def GetFeature(
        self, request: pb.GetFeatureRequest, grpc_context: RayServegRPCContext
    ) -> pb.GetFeatureResponse:
        async def work() -> pb.GetFeatureResponse:
            handle = self._model(request.model, "get_feature.model")
            return await handle.get_feature.remote(request.sae, request.feature)

        return await self._call("GetFeature", grpc_context, work, pb.GetFeatureResponse)

    async def SearchFeatures(
        self, request: pb.SearchFeaturesRequest, grpc_context: RayServegRPCContext
    ) -> pb.SearchFeaturesResponse:
        async def work() -> pb.SearchFeaturesResponse:
            limit = search_limit(request, self.limits)
            handle = self._model(request.model, "search_features.model")
            return await handle.search_features.remote(request.query, request.sae, limit)

        return await self._call("SearchFeatures", grpc_context, work, pb.SearchFeaturesResponse)

    async def Generate(
        self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        stream = None
        try:
            self.keys.check(grpc_context.invocation_metadata())
            spec = generate_from_proto(request, self.limits)
            handle = self._model(request.model, "generate.model").options(stream=True)
            stream = cast(DeploymentResponseGenerator, handle.generate.remote(spec))
            async for chunk in stream:
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException as e:
            code, message = status_for(_unwrap(e))
            grpc_context.set_code(code)
            grpc_context.set_details(message)
            # A streaming method must raise for Serve's proxy to send the status it set;
            # returning would end the stream with OK.
            raise StreamFailed(message) from None
        finally:
            if stream is not None:
                stream.cancel()
            metrics.observe_request("Generate", code.name, time.perf_counter() - start)

    # --- grpc.health.v1 (exempt from API keys) ------------------------------------------------
    async def Check(
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE_NAME):
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"health.service: unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=await self._serving_status())

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = await self._serving_status()
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(1.0)

    async def _serving_status(self) -> int:
        try:
            ready = await asyncio.gather(*(h.ready.remote() for h in self.models.values()))
        except Exception:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        ok = all(ready)
        return (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
