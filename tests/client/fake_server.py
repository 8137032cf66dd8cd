"""A fake saeserve server for client tests: fixed, known answers over a real gRPC channel.

``FakeSaeserve`` implements every RPC of ``saeserve.v1.Saeserve`` with deterministic
values computed from the request (formulas below, so tests can recompute them), checks
the few fields the client tests exercise as the real server would, and records calls,
metadata and requests. Failures and delays are injected per method. ``FakeServer``
serves it, with the standard health service, on a free localhost port. For manual CLI
runs: ``python -m tests.client.fake_server`` prints its address and serves until killed.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from concurrent import futures
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from saeserve.v1 import saeserve_pb2 as pb
from saeserve.v1 import saeserve_pb2_grpc as pb_grpc

MODEL = pb.ModelInfo(
    name="demo",
    family="gpt2",
    n_layers=2,
    d_model=16,
    vocab_size=100,
    max_positions=128,
    dtype="float32",
    has_chat_template=False,
    saes=[
        pb.SaeInfo(
            id="resid_post.0",
            hook_point="resid_post.0",
            d_in=16,
            d_sae=64,
            architecture=pb.SAE_ARCHITECTURE_TOPK,
            k=4,
            has_feature_index=True,
            dtype="bfloat16",
            weight_bytes=2 * (2 * 16 * 64 + 2 * 64 + 16),
        ),
        pb.SaeInfo(
            id="mlp_out.1",
            hook_point="mlp_out.1",
            d_in=16,
            d_sae=32,
            architecture=pb.SAE_ARCHITECTURE_JUMPRELU,
            k=0,
            has_feature_index=False,
            dtype="float32",
            weight_bytes=4 * (2 * 16 * 32 + 2 * 32 + 16),
        ),
    ],
)
SAES = {s.id: s for s in MODEL.saes}
TOP_K_LIMIT = 256


def fake_tokens(text: str) -> pb.Tokens:
    """``<bos>`` then one token per whitespace-led word; id = 1 + (sum of its bytes) % 99."""
    out = pb.Tokens(ids=[0], strings=["<bos>"], byte_starts=[0], byte_ends=[0])
    data = text.encode()
    for match in re.finditer(rb"\s*\S+", data):
        piece = match.group()
        out.ids.append(1 + sum(piece) % 99)
        out.strings.append(piece.decode())
        out.byte_starts.append(match.start())
        out.byte_ends.append(match.end())
    return out


def top_id(t: int, j: int, d_sae: int) -> int:
    return (t * 5 + j) % d_sae


def top_value(t: int, j: int, top_k: int, sae: pb.SaeInfo) -> float:
    """Descending within a token; zero beyond a topk SAE's k (as the real server sends)."""
    if sae.architecture == pb.SAE_ARCHITECTURE_TOPK and j >= sae.k:
        return 0.0
    return float(top_k - j) + t / 10


def dense_value(t: int, feature: int) -> float:
    return t + feature / 100


def steered_text(i: int) -> str:
    return f" s{i}"


def baseline_text(i: int) -> str:
    return f" b{i}"


class FakeSaeserve(pb_grpc.SaeserveServicer):
    """Known answers, plus knobs: ``failures[method]`` codes to fail with (one per call,
    in order), ``generate_failures_after_first_chunk`` codes to end Generate calls with
    once their first chunk is sent (one per call, in order), ``delays[method]`` seconds to
    stall, ``required_key`` to demand ``authorization: Bearer <key>``. Records ``calls``,
    ``metadata`` and ``requests``."""

    def __init__(self) -> None:
        self.failures: dict[str, list[grpc.StatusCode]] = {}
        self.generate_failures_after_first_chunk: list[grpc.StatusCode] = []
        self.delays: dict[str, float] = {}
        self.chunk_delay = 0.0
        self.required_key: str | None = None
        self.calls: Counter[str] = Counter()
        self.metadata: dict[str, dict[str, str]] = {}
        self.requests: dict[str, Any] = {}
        self.generate_ended = threading.Event()
        self.generate_sent = 0
        self._lock = threading.Lock()

    # -- knobs ---------------------------------------------------------------------------

    def record_call(
        self, name: str, request: Any, context: grpc.ServicerContext
    ) -> grpc.StatusCode | None:
        """Count and record a call; the failure queued for it, if any."""
        with self._lock:
            self.calls[name] += 1
            self.metadata[name] = {k: str(v) for k, v in context.invocation_metadata()}
            self.requests[name] = request
            queued = self.failures.get(name)
            return queued.pop(0) if queued else None

    def _enter(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        code = self.record_call(name, request, context)
        wanted = f"Bearer {self.required_key}"
        if self.required_key is not None and self.metadata[name].get("authorization") != wanted:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")
        if code is not None:
            context.abort(code, f"injected {code.name}")
        stall_until = time.monotonic() + self.delays.get(name, 0.0)
        while time.monotonic() < stall_until and context.is_active():
            time.sleep(0.01)

    @staticmethod
    def _model(model: str, context: grpc.ServicerContext) -> None:
        if model not in ("", MODEL.name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {model!r}")

    @staticmethod
    def _sae(sae: str, context: grpc.ServicerContext) -> pb.SaeInfo:
        if sae not in SAES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown SAE {sae!r}")
        return SAES[sae]

    # -- RPCs ----------------------------------------------------------------------------

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self._enter("ListModels", request, context)
        return pb.ListModelsResponse(models=[MODEL])

    def Tokenize(self, request: Any, context: grpc.ServicerContext) -> pb.TokenizeResponse:
        self._enter("Tokenize", request, context)
        self._model(request.model, context)
        if not request.text:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tokenize.text: required")
        return pb.TokenizeResponse(tokens=fake_tokens(request.text))

    def Decompose(self, request: Any, context: grpc.ServicerContext) -> pb.DecomposeResponse:
        self._enter("Decompose", request, context)
        self._model(request.model, context)
        top_k = request.top_k or 16
        if top_k > TOP_K_LIMIT:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"decompose.top_k: {top_k} > limit {TOP_K_LIMIT}",
            )
        saes = [self._sae(s, context) for s in request.saes] or list(MODEL.saes)
        with_rec = (
            request.include_reconstruction if request.HasField("include_reconstruction") else True
        )
        out = pb.DecomposeResponse()
        for text in request.texts:
            tokens = fake_tokens(text)
            n = len(tokens.ids)
            item = out.texts.add(tokens=tokens)
            for sae in saes:
                part = item.saes.add(sae=sae.id, hook_point=sae.hook_point, top_k=top_k)
                for t in range(n):
                    part.top_ids.extend(top_id(t, j, sae.d_sae) for j in range(top_k))
                    part.top_values.extend(top_value(t, j, top_k, sae) for j in range(top_k))
                    part.dense_values.extend(dense_value(t, f) for f in request.feature_ids)
                if with_rec:
                    part.token_mse.extend(0.01 * t for t in range(n))
                    part.explained_variance = 0.75
        return out

    def Generate(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Generate", request, context)
        context.add_callback(self.generate_ended.set)
        self._model(request.model, context)
        if bool(request.prompt) == bool(request.messages):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "generate: exactly one of prompt and messages must be set",
            )
        if request.messages:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "model 'demo' has no chat template")
        n = request.sampling.max_new_tokens or 64
        prompt_tokens = len(fake_tokens(request.prompt).ids)
        with self._lock:
            queued = self.generate_failures_after_first_chunk
            fail_after_first = queued.pop(0) if queued else None
        variants = [(pb.VARIANT_STEERED, steered_text)]
        if request.include_baseline:
            variants.append((pb.VARIANT_BASELINE, baseline_text))
        for i in range(n):
            for variant, text in variants:
                if self.chunk_delay:
                    time.sleep(self.chunk_delay)
                chunk = pb.GenerateChunk(
                    variant=variant,
                    index=i,
                    token_id=10 + i,
                    text=text(i),
                    tracked=[float(i + j) for j in range(len(request.track))],
                )
                if request.logprobs:
                    chunk.logprob = -0.1 * (i + 1)
                for t in range(request.top_logprobs):
                    chunk.top_logprobs.add(token_id=t, token=f"t{t}", logprob=-0.5 * (t + 1))
                if request.kl_from_baseline and variant == pb.VARIANT_STEERED:
                    chunk.kl_from_baseline = 0.25 * i
                if i == n - 1 and request.stop_conditions:  # the last one holds at the end
                    chunk.finish_reason = pb.FINISH_REASON_CONDITION
                    chunk.stop_condition = len(request.stop_conditions) - 1
                    chunk.stop_activation = 2.5
                    chunk.usage.prompt_tokens = prompt_tokens
                    chunk.usage.generated_tokens = n
                elif i == n - 1:
                    chunk.finish_reason = pb.FINISH_REASON_LENGTH
                    chunk.usage.prompt_tokens = prompt_tokens
                    chunk.usage.generated_tokens = n
                self.generate_sent += 1
                yield chunk
                if fail_after_first is not None:
                    context.abort(fail_after_first, f"injected {fail_after_first.name}")

    def GetFeature(self, request: Any, context: grpc.ServicerContext) -> pb.GetFeatureResponse:
        self._enter("GetFeature", request, context)
        self._model(request.model, context)
        sae = self._sae(request.sae, context)
        if not 0 <= request.feature < sae.d_sae:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"feature {request.feature} not in [0, {sae.d_sae}) of {sae.id!r}",
            )
        out = pb.GetFeatureResponse(
            feature=pb.FeatureRef(sae=sae.id, feature=request.feature),
            top_promoted=[
                pb.TokenEffect(token=" cat", token_id=12, logit_effect=0.8),
                pb.TokenEffect(token=" kitten", token_id=13, logit_effect=0.6),
            ],
            top_suppressed=[pb.TokenEffect(token=" dog", token_id=14, logit_effect=-0.5)],
            decoder_neighbours=[
                pb.FeatureNeighbour(feature=3, cosine=0.75),
                pb.FeatureNeighbour(feature=9, cosine=0.5),
            ],
            encoder_neighbours=[pb.FeatureNeighbour(feature=4, cosine=0.25)],
        )
        if not sae.has_feature_index:
            return out
        out.has_statistics = True
        out.density = 0.0125
        out.max_activation = 9.5
        out.mean_activation = 3.25
        out.tokens_indexed = 40000
        out.histogram.bin_edges.extend([0.0, 2.5, 5.0, 7.5, 10.0])
        out.histogram.counts.extend([50, 20, 5, 1])
        out.top_contexts.add(
            tokens=["The", " cat", " sat"], values=[0.0, 9.5, 1.25], max_index=1, max_value=9.5
        )
        out.top_contexts.add(
            tokens=[" a", " cat", "\n"], values=[0.0, 7.0, 0.0], max_index=1, max_value=7.0
        )
        out.explanation.text = "cats and kittens"
        out.explanation.source = pb.EXPLANATION_SOURCE_GENERATED
        band = out.quantiles.add(min_activation=1.5, max_activation=2.5)
        band.contexts.add(tokens=["A", " cat"], values=[0.0, 2.5], max_index=1, max_value=2.5)
        band.contexts.add(tokens=[" cats", "!"], values=[1.5, 0.0], max_index=0, max_value=1.5)
        return out

    def SearchFeatures(
        self, request: Any, context: grpc.ServicerContext
    ) -> pb.SearchFeaturesResponse:
        self._enter("SearchFeatures", request, context)
        self._model(request.model, context)
        if request.sae:
            self._sae(request.sae, context)
        if not request.query:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "search.query: required")
        matches = []
        if "cat" in request.query.lower():
            matches = [
                pb.FeatureMatch(
                    feature=pb.FeatureRef(sae="resid_post.0", feature=7),
                    score=2.5,
                    explanation=pb.Explanation(
                        text="cats and kittens", source=pb.EXPLANATION_SOURCE_IMPORTED
                    ),
                    top_tokens=[" cat", " kitten"],
                ),
                pb.FeatureMatch(
                    feature=pb.FeatureRef(sae="resid_post.0", feature=3),
                    score=1.0,
                    top_tokens=[" dog"],
                ),
            ]
        return pb.SearchFeaturesResponse(matches=matches[: request.limit or 10])


class FakeHealth(health.HealthServicer):
    """grpc.health.v1 whose Check calls the fake records as ``"Health.Check"``, failing
    them as its ``failures["Health.Check"]`` says (no API key needed, as on the server)."""

    def __init__(self, fake: FakeSaeserve) -> None:
        super().__init__()
        self._fake = fake

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        code = self._fake.record_call("Health.Check", request, context)
        if code is not None:
            context.abort(code, f"injected {code.name}")
        return super().Check(request, context)


class FakeServer:
    """``FakeSaeserve`` plus grpc.health.v1 (SERVING) on ``127.0.0.1:<free port>``."""

    def __init__(self) -> None:
        self.servicer = FakeSaeserve()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_SaeserveServicer_to_server(self.servicer, self._server)
        self.health = FakeHealth(self.servicer)
        for service in ("", "saeserve.v1.Saeserve"):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"

    def start(self) -> FakeServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)


def main() -> NoReturn:
    server = FakeServer().start()
    print(server.address, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
