"""The asyncio saeserve client, ``AsyncSaeserveClient``: the sync client's API, awaited.

Built on ``grpc.aio``; create it inside the running event loop that uses it. Methods
are coroutines with the same arguments and results as ``SaeserveClient``'s, except
``generate``, which returns an ``AsyncGenerateStream`` to iterate with ``async for``.
Leaving ``async with client.generate(...)`` or calling ``cancel()`` cancels the call
on the server (a stream dropped without either is cancelled when garbage collected).

    async with AsyncSaeserveClient("localhost:9000") as client:
        async with client.generate("Once upon", max_new_tokens=16) as stream:
            async for chunk in stream:
                print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio
from google.protobuf.message import Message

from saeserve.v1 import saeserve_pb2 as pb
from saeserve.v1 import saeserve_pb2_grpc as pb_grpc
from saeserve_client import convert
from saeserve_client.client import resolve_options
from saeserve_client.convert import ChatInput
from saeserve_client.errors import SaeserveError
from saeserve_client.options import ClientOptions
from saeserve_client.results import (
    Attribution,
    Condition,
    Feature,
    FeatureInputAttribution,
    FeatureMatch,
    GenerateChunk,
    Inspection,
    ModelInfo,
    SaeContrast,
    Steer,
    TextDecomposition,
    Tokens,
)


class AsyncSaeserveClient:
    """An asyncio client for one saeserve server; see ``SaeserveClient`` for the methods."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        options: ClientOptions | None = None,
        **overrides: Any,
    ) -> None:
        self.options = resolve_options(options, target, api_key, overrides)
        creds = self.options.credentials()
        args = self.options.grpc_channel_args()
        self._channel = (
            grpc.aio.secure_channel(self.options.target, creds, options=args)
            if creds is not None
            else grpc.aio.insecure_channel(self.options.target, options=args)
        )
        self._stub = pb_grpc.SaeserveStub(self._channel)
        self._metadata = self.options.metadata()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        reply = await self._call(
            "ListModels", self._stub.ListModels, pb.ListModelsRequest(), timeout
        )
        return convert.models(reply)

    async def tokenize(self, text: str, model: str = "", *, timeout: float | None = None) -> Tokens:
        request = pb.TokenizeRequest(model=model, text=text)
        reply = await self._call("Tokenize", self._stub.Tokenize, request, timeout)
        return convert.tokens(reply.tokens)

    async def decompose(
        self,
        texts: str | Sequence[str],
        *,
        model: str = "",
        saes: Sequence[str] = (),
        top_k: int = 16,
        feature_ids: Sequence[int] = (),
        include_reconstruction: bool = True,
        timeout: float | None = None,
    ) -> list[TextDecomposition]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        request = convert.decompose_request(
            model, batch, saes, top_k, feature_ids, include_reconstruction
        )
        reply = await self._call("Decompose", self._stub.Decompose, request, timeout)
        return convert.decompositions(reply, batch, feature_ids)

    def generate(
        self,
        prompt: str | Sequence[ChatInput],
        *,
        model: str = "",
        max_new_tokens: int = 64,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        interventions: Sequence[Steer] = (),
        include_baseline: bool = False,
        track: Sequence[tuple[str, int]] = (),
        logprobs: bool = False,
        top_logprobs: int = 0,
        kl_from_baseline: bool = False,
        stop_conditions: Sequence[Condition] = (),
        timeout: float | None = None,
    ) -> AsyncGenerateStream:
        request = convert.generate_request(
            model=model,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            ignore_eos=ignore_eos,
            interventions=interventions,
            include_baseline=include_baseline,
            track=track,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            kl_from_baseline=kl_from_baseline,
            stop_conditions=stop_conditions,
        )
        deadline = self.options.generate_timeout if timeout is None else timeout
        return AsyncGenerateStream(
            self._stub.Generate(request, timeout=deadline, metadata=self._metadata)
        )

    async def get_feature(
        self, sae: str, feature: int, model: str = "", *, timeout: float | None = None
    ) -> Feature:
        request = pb.GetFeatureRequest(model=model, sae=sae, feature=feature)
        return convert.feature(
            await self._call("GetFeature", self._stub.GetFeature, request, timeout)
        )

    async def search_features(
        self,
        query: str,
        sae: str = "",
        limit: int = 10,
        model: str = "",
        *,
        timeout: float | None = None,
    ) -> list[FeatureMatch]:
        request = pb.SearchFeaturesRequest(model=model, sae=sae, query=query, limit=limit)
        reply = await self._call("SearchFeatures", self._stub.SearchFeatures, request, timeout)
        return convert.feature_matches(reply)

    async def attribute(
        self,
        prompt: str,
        *,
        target: int | str | None = None,
        contrast: int | str | None = None,
        saes: Sequence[str] = (),
        top_n: int = 10,
        model: str = "",
        timeout: float | None = None,
    ) -> Attribution:
        """Which SAE features drove the next token after ``prompt``: ``target`` (a token
        id, or a text that is one token; None = the model's most likely) and, with
        ``contrast``, the logit difference; per SAE the top_n features by direct and by
        total effect, positive and negative."""
        request = convert.attribute_request(model, prompt, target, contrast, saes, top_n)
        reply = await self._call("Attribute", self._stub.Attribute, request, timeout)
        return convert.attribution(reply)

    async def attribute_feature(
        self,
        prompt: str,
        sae: str,
        feature: int,
        *,
        position: int | None = None,
        top_n: int = 10,
        model: str = "",
        timeout: float | None = None,
    ) -> FeatureInputAttribution:
        """Which tokens of ``prompt`` drove ``feature`` of ``sae`` at ``position`` (None =
        the last token): gradient x input per position."""
        request = convert.attribute_feature_request(model, prompt, sae, feature, position, top_n)
        reply = await self._call("AttributeFeature", self._stub.AttributeFeature, request, timeout)
        return convert.feature_input_attribution(reply)

    async def inspect_features(
        self,
        text: str | Sequence[ChatInput],
        *,
        model: str = "",
        saes: Sequence[str] = (),
        order_by: str = "count",
        top_n: int = 20,
        max_positions: int = 16,
        timeout: float | None = None,
    ) -> Inspection:
        """The features of each SAE (``saes``; empty = all) that fire most over a whole
        ``text`` (or chat messages, rendered with the model's chat template): per feature
        its active tokens, max, sum and means, and its first ``max_positions`` positions.
        ``order_by`` is "count", "max", "sum" or "mean_active"."""
        request = convert.inspect_request(model, text, saes, order_by, top_n, max_positions)
        reply = await self._call("InspectFeatures", self._stub.InspectFeatures, request, timeout)
        return convert.inspection(reply)

    async def contrast_features(
        self,
        texts_a: Sequence[str],
        texts_b: Sequence[str],
        *,
        model: str = "",
        saes: Sequence[str] = (),
        unit: str = "token",
        order_by: str = "mean_diff",
        top_n: int = 20,
        timeout: float | None = None,
    ) -> dict[str, SaeContrast]:
        """Per SAE id, the features that best separate ``texts_a`` from ``texts_b``:
        ``unit`` "token" (every token a sample) or "text_max" (each text's max);
        ``order_by`` "mean_diff" or "auroc"; ``top_n`` each way."""
        request = convert.contrast_request(model, texts_a, texts_b, saes, unit, order_by, top_n)
        reply = await self._call("ContrastFeatures", self._stub.ContrastFeatures, request, timeout)
        return convert.contrasts(reply)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        health_pb2, health_pb2_grpc = convert.health_modules()
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self._call("Health.Check", stub.Check, request, timeout)
        return convert.serving_status(reply)

    async def _call(self, name: str, method: Any, request: Message, timeout: float | None) -> Any:
        deadline = self.options.timeout if timeout is None else timeout
        try:
            return await method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise SaeserveError.from_rpc_error(exc, name) from None


class AsyncGenerateStream(AsyncIterator[GenerateChunk]):
    """The chunks of one Generate call for ``async for``; ``cancel()`` / ``aclose()`` or
    leaving ``async with`` stops generation on the server. gRPC retries UNAVAILABLE only
    before the first chunk."""

    def __init__(self, call: Any) -> None:
        self._call = call  # the grpc.aio call, read one GenerateChunk message at a time
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> GenerateChunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            message = await self._call.read()
        except asyncio.CancelledError:
            self.cancel()
            raise
        except grpc.RpcError as exc:
            if self._closed:  # cancelled while reading
                raise StopAsyncIteration from None
            self._closed = True
            raise SaeserveError.from_rpc_error(exc, "Generate") from None
        if message is grpc.aio.EOF:
            self._closed = True
            raise StopAsyncIteration
        return convert.generate_chunk(message)

    def cancel(self) -> None:
        """Stop the call; iteration then ends. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # loop or interpreter already gone
            self.cancel()
