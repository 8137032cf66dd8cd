"""The gRPC ingress deployment: it serves saeserve.v1.Saeserve, health and reflection.

Each ingress replica runs its own grpc.aio server (``grpc_server.py``) on the replica's
event loop, on ``settings.grpc_port`` (``SO_REUSEPORT``, so several replicas on one node
share the port); its methods are the RPC handlers. Serving gRPC here rather than through
Ray Serve's gRPC proxy saves a process hop per call and per streamed message, and makes a
client's cancel reach the model replica every time (docs/notes-ray-grpc.md).

Every RPC goes through one path (``_call``/``Generate``): API-key check, request
conversion and limits, the model replica's handle, metrics, and the mapping of errors to
status codes. Tokenize is answered here (the ingress holds each model's tokenizer), and Generate
prompts are tokenized here, so the model replica gets ids;
concurrent Decompose calls for one model leave as one replica call (``Batcher``). The
methods hold no model logic; the replicas (``replica.py``) and the engine do the work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from saeserve.engine.tokenize import chat_token_ids, tokenize
from saeserve.engine.types import DecomposeRequest, DecomposeResult, Tokenization, Variant
from saeserve.errors import NotFound, ResourceExhausted
from saeserve.model.loader import LoadedTokenizer, load_tokenizer
from saeserve.server import metrics
from saeserve.server.auth import ApiKeys
from saeserve.server.batcher import Batcher
from saeserve.server.convert import (
    GenerateSpec,
    chunk_to_proto,
    decompose_from_proto,
    decompose_to_proto,
    generate_from_proto,
    search_limit,
    tokens_to_proto,
)
from saeserve.server.grpc_server import build_grpc_server
from saeserve.server.health import Health
from saeserve.server.settings import ServerSettings
from saeserve.server.status import status_for
from saeserve.v1 import saeserve_pb2 as pb

log = logging.getLogger(__name__)
R = TypeVar("R")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
INLINE_TOKENIZE_CHARS = 20_000
"""Longer Tokenize texts are tokenized on a worker thread, off the event loop."""


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


class SaeserveIngress:
    def __init__(self, settings: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        self.settings = ServerSettings.model_validate(settings)
        self.limits = self.settings.limits
        self.models = models
        # Generate streams go over Ray Serve's replica-to-replica gRPC transport: a group of
        # events is then one gRPC message, not an object reported through Ray's core worker
        # (far less CPU per group in both processes; docs/BENCHMARKS.md). Other calls stay
        # on Ray's object path: that channel caps a message at 4 MiB, and a Decompose
        # batch's result can be much larger.
        self.streams = {
            name: h.options(stream=True, _by_reference=False) for name, h in models.items()
        }
        self.default_model = self.settings.models[0].name
        self.keys = ApiKeys.from_settings(self.settings)
        self.tokenizers = {m.name: load_tokenizer(m.path) for m in self.settings.models}
        self.decompose_batchers = {
            name: self._batcher(handle) for name, handle in self.models.items()
        }
        if not self.keys.enabled:
            log.warning("saeserve: no API keys configured; the server is open to any caller")
        self.server = build_grpc_server(
            self,
            Health(self._serving_status),
            host=self.settings.host,
            port=self.settings.grpc_port,
            max_message_bytes=self.settings.max_message_bytes,
        )
        self._started = asyncio.get_running_loop().create_task(self.server.start())

    def _batcher(self, handle: DeploymentHandle) -> Batcher[DecomposeRequest, DecomposeResult]:
        async def send(reqs: list[DecomposeRequest]) -> list[DecomposeResult | BaseException]:
            outcomes: list[DecomposeResult | BaseException] = await handle.decompose_batch.remote(
                reqs
            )
            return outcomes

        if self.limits.max_batch_size > 1:
            # one batch per model replica at a time; what arrives meanwhile forms the next
            in_flight = self.limits.max_decompose_batches_in_flight or self.settings.replicas
        else:  # batching off: nothing to gather, so every request goes at once
            in_flight = self.limits.max_queue_length
        return Batcher(
            send,
            max_batch_size=self.limits.max_batch_size,
            max_in_flight=in_flight,
            max_queue_length=self.limits.max_queue_length,
            wait_s=self.limits.batch_wait_timeout_s,
            on_reject=metrics.REJECTED.labels(reason="queue_full").inc,
        )

    async def check_health(self) -> None:
        """Ray Serve's replica health check: the gRPC server must have started."""
        if self._started.done() and (error := self._started.exception()) is not None:
            raise error

    async def __del__(self) -> None:
        await self.server.stop(grace=5.0)

    # --- plumbing ------------------------------------------------------------------------------
    def _model_name(self, name: str, field: str) -> str:
        name = name or self.default_model
        if name not in self.models:
            raise NotFound(f"{field}: unknown model {name!r} (known: {', '.join(self.models)})")
        return name

    def _model(self, name: str, field: str) -> DeploymentHandle:
        return self.models[self._model_name(name, field)]

    async def _call(
        self,
        rpc: str,
        ctx: Context,
        work: Callable[[], Awaitable[R]],
    ) -> R:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            self.keys.check(ctx.invocation_metadata())
            return await work()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # every error becomes a status; the server keeps serving
            code, details = status_for(_unwrap(e), rpc=rpc)
            await ctx.abort(code, details)
            raise AssertionError("grpc.aio abort returned") from None  # pragma: no cover
        finally:
            metrics.observe_request(rpc, code.name, time.perf_counter() - start)

    # --- RPCs ------------------------------------------------------------------------------
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        async def work() -> pb.ListModelsResponse:
            infos = await asyncio.gather(*(h.info.remote() for h in self.models.values()))
            return pb.ListModelsResponse(models=infos)

        return await self._call("ListModels", context, work)

    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        async def work() -> pb.TokenizeResponse:
            tok = self.tokenizers[self._model_name(request.model, "tokenize.model")]
            tokens = await self._tokenize(tok, request.text, "tokenize.text")
            return pb.TokenizeResponse(tokens=tokens_to_proto(tokens))

        return await self._call("Tokenize", context, work)

    async def _tokenize(self, tok: LoadedTokenizer, text: str, field_name: str) -> Tokenization:
        """``tokenize`` within the limits; long texts on a worker thread, off the loop."""
        run = functools.partial(
            tokenize,
            tok.tokenizer,
            text,
            max_tokens=self.limits.tokens_per_text(tok.max_positions),
            field_name=field_name,
        )
        return await asyncio.to_thread(run) if len(text) > INLINE_TOKENIZE_CHARS else run()

    async def _prompt_ids(self, name: str, spec: GenerateSpec) -> list[int]:
        """A Generate prompt as ids: its text, or its messages through the chat template."""
        tok = self.tokenizers[name]
        if not spec.messages:
            return (await self._tokenize(tok, spec.prompt, "generate.prompt")).token_ids
        return await asyncio.to_thread(
            chat_token_ids,
            tok.tokenizer,
            spec.messages,
            max_tokens=self.limits.tokens_per_text(tok.max_positions),
            field_name="generate.messages",
            model=name,
        )

    async def Decompose(
        self, request: pb.DecomposeRequest, context: Context
    ) -> pb.DecomposeResponse:
        async def work() -> pb.DecomposeResponse:
            name = self._model_name(request.model, "decompose.model")
            req = decompose_from_proto(request, self.limits)
            return decompose_to_proto(await self.decompose_batchers[name].submit(req))

        return await self._call("Decompose", context, work)

    async def GetFeature(
        self, request: pb.GetFeatureRequest, context: Context
    ) -> pb.GetFeatureResponse:
        async def work() -> pb.GetFeatureResponse:
            handle = self._model(request.model, "get_feature.model")
            response: pb.GetFeatureResponse = await handle.get_feature.remote(
                request.sae, request.feature
            )
            return response

        return await self._call("GetFeature", context, work)

    async def SearchFeatures(
        self, request: pb.SearchFeaturesRequest, context: Context
    ) -> pb.SearchFeaturesResponse:
        async def work() -> pb.SearchFeaturesResponse:
            limit = search_limit(request, self.limits)
            handle = self._model(request.model, "search_features.model")
            response: pb.SearchFeaturesResponse = await handle.search_features.remote(
                request.query, request.sae, limit
            )
            return response

        return await self._call("SearchFeatures", context, work)

    async def Generate(self, request: pb.GenerateRequest, context: Context) -> None:
        """Chunks as the model replica makes them: it sends its events in groups
        (limits.stream_interval_s), and each event goes out as one chunk message.

        Written with ``context.write`` rather than as an async generator: when the client
        cancels (or its deadline passes), grpc cancels this coroutine wherever it waits, so
        the ``finally`` always stops the replica's generation. A generator suspended at a
        ``yield`` would only be closed whenever it is garbage-collected."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        stream = None
        try:
            self.keys.check(context.invocation_metadata())
            spec = generate_from_proto(request, self.limits)
            name = self._model_name(request.model, "generate.model")
            req = spec.request(await self._prompt_ids(name, spec))
            prompt_tokens = len(req.prompt_ids)
            stream = cast(DeploymentResponseGenerator, self.streams[name].generate.remote(req))
            index = dict.fromkeys(Variant, 0)
            async for events in stream:
                for ev in events:
                    await context.write(chunk_to_proto(ev, index[ev.variant], prompt_tokens))
                    index[ev.variant] += 1
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            code, details = status_for(_unwrap(e), rpc="Generate")
            await context.abort(code, details)
        finally:
            if stream is not None:
                stream.cancel()
            metrics.observe_request("Generate", code.name, time.perf_counter() - start)

    # --- health -------------------------------------------------------------------------------
    async def _serving_status(self) -> health_pb2.HealthCheckResponse.ServingStatus:
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
