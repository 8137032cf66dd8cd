"""The synchronous saeserve client, ``SaeserveClient``.

Wraps a ``grpc.Channel`` and the generated ``Saeserve`` stub: each method builds its
request with ``convert``, calls with the API key metadata and a deadline, and returns the
typed values of ``results``; the channel's service config has gRPC retry UNAVAILABLE as
``options.retry`` says.
Any failed call raises ``SaeserveError``. ``generate`` returns a ``GenerateStream``:
iterate it for chunks as the server sends them; breaking out of the loop, ``close()``
or leaving its ``with`` block cancels the call on the server.

    with SaeserveClient("localhost:9000", api_key="...") as client:
        [text] = client.decompose("The Golden Gate Bridge", top_k=8)
        for chunk in client.generate("Once", interventions=[Steer.add("resid_post.6", 42, 8.0)]):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf.message import Message

from saeserve.v1 import saeserve_pb2 as pb
from saeserve.v1 import saeserve_pb2_grpc as pb_grpc
from saeserve_client import convert
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


def resolve_options(
    options: ClientOptions | None, target: str | None, api_key: str | None, overrides: Any
) -> ClientOptions:
    """``options`` (default: ``ClientOptions()``) with the constructor's shortcuts applied."""
    fields: dict[str, Any] = dict(overrides)
    if target is not None:
        fields["target"] = target
    if api_key is not None:
        fields["api_key"] = api_key
    return dataclasses.replace(options or ClientOptions(), **fields)


class SaeserveClient:
    """A blocking client for one saeserve server.

    ``SaeserveClient(target, api_key=..., options=ClientOptions(...), **fields)``: any
    other ``ClientOptions`` field (``timeout``, ``retry``, ``secure``,
    ``root_certificates``, ``max_message_bytes``, ...) may be passed by keyword.
    ``timeout=`` on a method overrides the default deadline for that call. Thread-safe;
    use one client per process and ``close()`` it (or use ``with``).
    """

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
            grpc.secure_channel(self.options.target, creds, options=args)
            if creds is not None
            else grpc.insecure_channel(self.options.target, options=args)
        )
        self._stub = pb_grpc.SaeserveStub(self._channel)
        self._metadata = self.options.metadata()

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- RPCs ----------------------------------------------------------------------------

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The server's models with their SAEs; the first is the default model."""
        reply = self._call("ListModels", self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return convert.models(reply)

    def tokenize(self, text: str, model: str = "", *, timeout: float | None = None) -> Tokens:
        """The model's tokens for ``text``: ids, strings and UTF-8 byte offsets."""
        request = pb.TokenizeRequest(model=model, text=text)
        return convert.tokens(self._call("Tokenize", self._stub.Tokenize, request, timeout).tokens)

    def decompose(
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
        """Each text's tokens and, per SAE (``saes``; empty = all), its top features.

        Returns one ``TextDecomposition`` per text (a single string gives a list of one).
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        request = convert.decompose_request(
            model, batch, saes, top_k, feature_ids, include_reconstruction
        )
        reply = self._call("Decompose", self._stub.Decompose, request, timeout)
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
    ) -> GenerateStream:
        """Stream a continuation of ``prompt`` (a string, or chat messages as
        ``{"role", "content"}`` dicts or ``(role, content)`` pairs), steered by
        ``interventions``. ``temperature=0`` is greedy; None leaves the server default.
        ``track`` lists ``(sae, feature)`` pairs whose activations come with each chunk.
        ``stop_conditions`` end a variant (the baseline too) at the first step where a
        ``Condition`` holds (finish_reason "condition").
        """
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
        return GenerateStream(
            self._stub.Generate(request, timeout=deadline, metadata=self._metadata)
        )

    def get_feature(
        self, sae: str, feature: int, model: str = "", *, timeout: float | None = None
    ) -> Feature:
        """Statistics, top contexts, logit effects and label of one feature."""
        request = pb.GetFeatureRequest(model=model, sae=sae, feature=feature)
        return convert.feature(self._call("GetFeature", self._stub.GetFeature, request, timeout))

    def search_features(
        self,
        query: str,
        sae: str = "",
        limit: int = 10,
        model: str = "",
        *,
        timeout: float | None = None,
    ) -> list[FeatureMatch]:
        """Features whose explanations or top tokens match ``query``, best first."""
        request = pb.SearchFeaturesRequest(model=model, sae=sae, query=query, limit=limit)
        reply = self._call("SearchFeatures", self._stub.SearchFeatures, request, timeout)
        return convert.feature_matches(reply)

    def attribute(
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
        reply = self._call("Attribute", self._stub.Attribute, request, timeout)
        return convert.attribution(reply)

    def attribute_feature(
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
        reply = self._call("AttributeFeature", self._stub.AttributeFeature, request, timeout)
        return convert.feature_input_attribution(reply)

    def inspect_features(
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
        reply = self._call("InspectFeatures", self._stub.InspectFeatures, request, timeout)
        return convert.inspection(reply)

    def contrast_features(
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
        reply = self._call("ContrastFeatures", self._stub.ContrastFeatures, request, timeout)
        return convert.contrasts(reply)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1 status: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".

        Needs the grpcio-health-checking package; without it raises ``RuntimeError``.
        """
        health_pb2, health_pb2_grpc = convert.health_modules()
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        return convert.serving_status(self._call("Health.Check", stub.Check, request, timeout))

    # -- plumbing ------------------------------------------------------------------------

    def _call(
        self,
        name: str,
        method: grpc.UnaryUnaryMultiCallable,
        request: Message,
        timeout: float | None,
    ) -> Any:
        deadline = self.options.timeout if timeout is None else timeout
        try:
            return method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise SaeserveError.from_rpc_error(exc, name) from None


class GenerateStream(Iterator[GenerateChunk]):
    """The chunks of one Generate call, as the server sends them.

    Iterate it (once). ``close()`` / ``cancel()``, leaving a ``with`` block, or dropping
    the last reference (e.g. ``break`` out of ``for chunk in client.generate(...)``)
    cancels the call, which stops generation on the server. gRPC retries a call that fails
    with UNAVAILABLE before its first chunk; a failure raises ``SaeserveError``.
    """

    def __init__(self, call: Any) -> None:
        self._call = call  # the grpc call: an iterator of GenerateChunk messages
        self._closed = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> GenerateChunk:
        if self._closed:
            raise StopIteration
        try:
            message = next(self._call)
        except StopIteration:
            self._closed = True
            raise
        except grpc.RpcError as exc:
            if self._closed:  # cancelled by close() from another thread
                raise StopIteration from None
            self._closed = True
            raise SaeserveError.from_rpc_error(exc, "Generate") from None
        return convert.generate_chunk(message)

    def cancel(self) -> None:
        """Stop the call; the iterator then ends. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    close = cancel

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing to cancel
            self.cancel()
