"""The operations every transport exposes, implemented once.

``Operations`` is what an ingress replica serves: list models, tokenize, decompose,
generate, get a feature, search features, inspect and contrast features over whole texts. Each operation takes its request as the
saeserve.v1 protobuf message (the API contract; the HTTP JSON API is that message's JSON
mapping) and a ``Caller`` (the transport's name and the caller's ``authorization``), and
does everything but the wire format: the API-key check, request conversion and limits
(``convert.py``), tokenization (prompts reach the model replica as ids), Decompose
batching (``Batcher``), the call to the model replica, metrics, and the error model. A
failure leaves as ``OperationFailed`` carrying its status (``status.py``), counted once;
the gRPC servicer and the HTTP routes only translate requests, responses and that status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from saeserve.engine.attribution import (
    AttributionRequest,
    AttributionResult,
    FeatureInputRequest,
    FeatureInputResult,
)
from saeserve.engine.tokenize import (
    chat_token_ids,
    check_text,
    single_token_id,
    token_strings,
    tokenize,
)
from saeserve.engine.types import DecomposeRequest, DecomposeResult, Tokenization, Variant
from saeserve.errors import InvalidArgument, NotFound, SaeserveError
from saeserve.model.loader import LoadedTokenizer, load_tokenizer
from saeserve.server import metrics
from saeserve.server.auth import ApiKeys, Metadata
from saeserve.server.batcher import Batcher
from saeserve.server.convert import (
    GenerateSpec,
    attribution_to_proto,
    attribution_top_n,
    chunk_to_proto,
    contrast_from_proto,
    contrast_to_proto,
    decompose_from_proto,
    decompose_to_proto,
    feature_input_to_proto,
    generate_from_proto,
    inspect_from_proto,
    inspect_to_proto,
    search_limit,
    tokens_to_proto,
)
from saeserve.server.key_limits import KeyLimiter
from saeserve.server.settings import ServerSettings
from saeserve.server.status import RpcStatus, original, status_for
from saeserve.v1 import saeserve_pb2 as pb

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 1.0
"""How long a health check waits for the model replicas before it answers NOT_SERVING."""
INLINE_TOKENIZE_CHARS = 20_000
"""Longer texts are tokenized on a worker thread, off the event loop."""


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as the operations care: the transport and its auth metadata."""

    transport: str
    """``grpc`` or ``http`` (a metrics label)."""
    metadata: Metadata
    """Carries ``authorization: Bearer <key>`` (gRPC metadata, or the HTTP header)."""


class OperationFailed(Exception):
    """An operation ended with a non-OK status; transports send ``status`` as theirs."""

    def __init__(self, status: RpcStatus) -> None:
        super().__init__(status.details)
        self.status = status


R = TypeVar("R")


def _answer(outcome: R | SaeserveError) -> R:
    """A model replica's answer, or its error for the caller's mistake raised here."""
    if isinstance(outcome, SaeserveError):
        raise outcome
    return outcome


class Operations:
    def __init__(self, settings: ServerSettings, models: dict[str, DeploymentHandle]) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.models = models
        # Generate streams go over Ray Serve's replica-to-replica gRPC transport: a group of
        # events is then one gRPC message, not an object reported through Ray's core worker
        # (far less CPU per group in both processes; docs/BENCHMARKS.md). Other calls stay
        # on Ray's object path: that channel caps a message at 4 MiB, and a Decompose
        # batch's result can be much larger.
        self.streams = {
            name: h.options(stream=True, _by_reference=False) for name, h in models.items()
        }
        self.default_model = settings.models[0].name
        self.keys = ApiKeys.from_settings(settings)
        self.limiter = KeyLimiter(settings.key_limits)
        self.tokenizers = {m.name: load_tokenizer(m.path) for m in settings.models}
        self.decompose_batchers = {name: self._batcher(h) for name, h in models.items()}
        if not self.keys.enabled:
            log.warning("saeserve: no API keys configured; the server is open to any caller")

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
            on_queue=metrics.WAITING.labels(rpc="Decompose").set,
            on_sent=metrics.QUEUE_WAIT.labels(rpc="Decompose").observe,
        )

    # --- plumbing ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _serving(
        self, rpc: str, caller: Caller, request: Message | None = None
    ) -> AsyncIterator[str]:
        """Check the key and its rate limits, then run the body with the key's name (to
        charge its tokens); count and time it; failures leave as ``OperationFailed``
        (cancellation stays a cancellation)."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        failed: RpcStatus | None = None
        if request is not None:
            metrics.REQUEST_BYTES.labels(rpc=rpc).observe(request.ByteSize())
        try:
            key = self.keys.check(caller.metadata)
            self.limiter.admit(key)
            yield key
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            failed = status_for(e, rpc=rpc)
            code = failed.code
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                reason = getattr(original(e), "reason", "queue_full")  # Ray's back-pressure too
                metrics.REJECTED.labels(reason=reason).inc()
        finally:
            metrics.observe_request(rpc, caller.transport, code.name, time.perf_counter() - start)
        if failed is not None:
            # raised outside the handler, so it carries no chain to the original's frames
            # (which hold the request: a refused 50 MiB prompt must not outlive its call)
            raise OperationFailed(failed)

    def model_name(self, name: str, field: str) -> str:
        """``name``, or the default model for an empty one; NotFound if not served."""
        name = name or self.default_model
        if name not in self.models:
            raise NotFound(f"{field}: unknown model {name!r} (known: {', '.join(self.models)})")
        return name

    def token_string(self, model: str, token_id: int) -> str:
        """One token of a served model decoded on its own."""
        return token_strings(self.tokenizers[model].tokenizer, [token_id])[0]

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

    # --- operations ------------------------------------------------------------------------
    async def list_models(
        self, request: pb.ListModelsRequest, caller: Caller
    ) -> pb.ListModelsResponse:
        async with self._serving("ListModels", caller):
            infos = await asyncio.gather(*(h.info.remote() for h in self.models.values()))
            return pb.ListModelsResponse(models=infos)

    async def tokenize(self, request: pb.TokenizeRequest, caller: Caller) -> pb.TokenizeResponse:
        async with self._serving("Tokenize", caller, request) as key:
            tok = self.tokenizers[self.model_name(request.model, "tokenize.model")]
            tokens = await self._tokenize(tok, request.text, "tokenize.text")
            self.limiter.charge(key, len(tokens.token_ids))
            return pb.TokenizeResponse(tokens=tokens_to_proto(tokens))

    async def decompose(self, request: pb.DecomposeRequest, caller: Caller) -> pb.DecomposeResponse:
        async with self._serving("Decompose", caller, request) as key:
            name = self.model_name(request.model, "decompose.model")
            req = decompose_from_proto(request, self.limits)
            tok = self.tokenizers[name]
            max_tokens = self.limits.tokens_per_text(tok.max_positions)
            for i, text in enumerate(req.texts):  # before the batch: bounded work per text
                check_text(
                    tok.tokenizer, text, max_tokens=max_tokens, field_name=f"decompose.texts[{i}]"
                )
            result = await self.decompose_batchers[name].submit(req)
            self.limiter.charge(key, result.n_tokens)
            return decompose_to_proto(result)

    async def get_feature(
        self, request: pb.GetFeatureRequest, caller: Caller
    ) -> pb.GetFeatureResponse:
        async with self._serving("GetFeature", caller, request):
            handle = self.models[self.model_name(request.model, "get_feature.model")]
            return _answer(await handle.get_feature.remote(request.sae, request.feature))

    async def search_features(
        self, request: pb.SearchFeaturesRequest, caller: Caller
    ) -> pb.SearchFeaturesResponse:
        async with self._serving("SearchFeatures", caller, request):
            limit = search_limit(request, self.limits)
            handle = self.models[self.model_name(request.model, "search_features.model")]
            return _answer(await handle.search_features.remote(request.query, request.sae, limit))

    async def generate(
        self, request: pb.GenerateRequest, caller: Caller
    ) -> AsyncGenerator[list[pb.GenerateChunk], None]:
        """The chunks in the groups the model replica sends them in (limits.stream_interval_s;
        each engine event is one chunk); a transport may write a group as one message.

        Closing the iterator (``aclose``, as ``contextlib.aclosing`` does when the consumer
        is cancelled) or cancelling a task that awaits it stops the replica's generation:
        no tokens are generated for nobody."""
        start = time.perf_counter()
        async with self._serving("Generate", caller, request) as key:
            spec = generate_from_proto(request, self.limits)
            name = self.model_name(request.model, "generate.model")
            req = spec.request(await self._prompt_ids(name, spec))
            prompt_tokens = len(req.prompt_ids)
            metrics.PROMPT_TOKENS.inc(prompt_tokens)
            self.limiter.charge(key, prompt_tokens)
            strings = functools.partial(token_strings, self.tokenizers[name].tokenizer)
            stream = cast(DeploymentResponseGenerator, self.streams[name].generate.remote(req))
            try:
                index, first = dict.fromkeys(Variant, 0), True
                async for events in stream:
                    group = []
                    events = _answer(events)
                    for ev in events:
                        group.append(chunk_to_proto(ev, index[ev.variant], prompt_tokens, strings))
                        index[ev.variant] += 1
                    self.limiter.charge(key, sum(c.token_id >= 0 for c in group))
                    if first:
                        first = False
                        metrics.TIME_TO_FIRST_TOKEN.labels(transport=caller.transport).observe(
                            time.perf_counter() - start
                        )
                    yield group
            finally:
                stream.cancel()

    async def attribute(self, request: pb.AttributeRequest, caller: Caller) -> pb.AttributeResponse:
        async with self._serving("Attribute", caller, request) as key:
            name = self.model_name(request.model, "attribute.model")
            top_n = attribution_top_n(request.top_n, self.limits, "attribute")
            tok = self.tokenizers[name]
            target, contrast = (
                _token_choice(tok, choice, f"attribute.{field}")
                for field, choice in (("target", request.target), ("contrast", request.contrast))
            )
            tokens = await self._tokenize(tok, request.prompt, "attribute.prompt")
            self.limiter.charge(key, len(tokens.token_ids))
            req = AttributionRequest(tokens.token_ids, list(request.saes), target, contrast, top_n)
            result: AttributionResult = _answer(await self.models[name].attribute.remote(req))
            strings = functools.partial(token_strings, tok.tokenizer)
            return attribution_to_proto(result, tokens, strings)

    async def attribute_feature(
        self, request: pb.AttributeFeatureRequest, caller: Caller
    ) -> pb.AttributeFeatureResponse:
        async with self._serving("AttributeFeature", caller, request) as key:
            name = self.model_name(request.model, "attribute_feature.model")
            top_n = attribution_top_n(request.top_n, self.limits, "attribute_feature")
            if not request.sae:
                raise InvalidArgument("attribute_feature.sae: required")
            tok = self.tokenizers[name]
            tokens = await self._tokenize(tok, request.prompt, "attribute_feature.prompt")
            self.limiter.charge(key, len(tokens.token_ids))
            position = request.position if request.HasField("position") else None
            req = FeatureInputRequest(
                tokens.token_ids, request.sae, request.feature, position, top_n
            )
            result: FeatureInputResult = _answer(
                await self.models[name].attribute_feature.remote(req)
            )
            return feature_input_to_proto(result, tokens)

    async def inspect_features(
        self, request: pb.InspectFeaturesRequest, caller: Caller
    ) -> pb.InspectFeaturesResponse:
        async with self._serving("InspectFeatures", caller, request) as key:
            name = self.model_name(request.model, "inspect_features.model")
            spec = inspect_from_proto(request, self.limits)
            tok = self.tokenizers[name]
            if spec.messages:
                ids = await asyncio.to_thread(
                    chat_token_ids,
                    tok.tokenizer,
                    spec.messages,
                    max_tokens=self.limits.tokens_per_text(tok.max_positions),
                    field_name="inspect_features.messages",
                    model=name,
                )  # the chat template's tokens come from no one text: no byte offsets
                tokens = Tokenization(ids, token_strings(tok.tokenizer, ids), [(0, 0)] * len(ids))
            else:
                tokens = await self._tokenize(tok, spec.text, "inspect_features.text")
            self.limiter.charge(key, len(tokens.token_ids))
            handle = self.models[name]
            result = await handle.inspect_features.remote(tokens.token_ids, spec.request)
            return inspect_to_proto(tokens, _answer(result))

    async def contrast_features(
        self, request: pb.ContrastFeaturesRequest, caller: Caller
    ) -> pb.ContrastFeaturesResponse:
        async with self._serving("ContrastFeatures", caller, request) as key:
            name = self.model_name(request.model, "contrast_features.model")
            req = contrast_from_proto(request, self.limits)
            tok = self.tokenizers[name]
            max_tokens = self.limits.tokens_per_text(tok.max_positions)
            sets = {"texts_a": list(request.texts_a), "texts_b": list(request.texts_b)}
            for set_name, texts in sets.items():  # every text's size before any is tokenized
                for i, text in enumerate(texts):
                    check_text(
                        tok.tokenizer,
                        text,
                        max_tokens=max_tokens,
                        field_name=f"contrast_features.{set_name}[{i}]",
                    )

            def ids_of(set_name: str) -> list[list[int]]:
                return [
                    tokenize(
                        tok.tokenizer,
                        text,
                        max_tokens=max_tokens,
                        field_name=f"contrast_features.{set_name}[{i}]",
                    ).token_ids
                    for i, text in enumerate(sets[set_name])
                ]

            ids_a, ids_b = await asyncio.to_thread(lambda: (ids_of("texts_a"), ids_of("texts_b")))
            self.limiter.charge(key, sum(map(len, ids_a)) + sum(map(len, ids_b)))
            result = await self.models[name].contrast_features.remote(ids_a, ids_b, req)
            return contrast_to_proto(_answer(result))

    # --- health ---------------------------------------------------------------------------
    async def serving(self) -> bool:
        """Whether every model has a replica that answers within HEALTH_TIMEOUT_S (while
        one is being replaced the call would wait: that is "not serving", said promptly)."""
        try:
            ready: list[Any] = await asyncio.wait_for(
                asyncio.gather(*(h.ready.remote() for h in self.models.values())),
                HEALTH_TIMEOUT_S,
            )
        except Exception:
            return False
        return all(ready)


def _token_choice(tok: LoadedTokenizer, choice: pb.TokenChoice, field: str) -> int | None:
    """A TokenChoice's id (its text must be one token); None when it names none."""
    kind = choice.WhichOneof("token")
    if kind == "text":
        return single_token_id(tok.tokenizer, choice.text, field_name=f"{field}.text")
    return choice.id if kind == "id" else None
