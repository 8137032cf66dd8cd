"""Every class of bad input gets its documented status code, and the server keeps serving."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, Server

C = grpc.StatusCode
ADD = pb.INTERVENTION_MODE_ADD


def _gen(**kw: Any) -> pb.GenerateRequest:
    kw.setdefault("prompt", "hello")
    return pb.GenerateRequest(**kw)


def _steer(**kw: Any) -> pb.GenerateRequest:
    iv = dict(mode=ADD, sae="post0", feature=1, value=1.0)
    iv.update(kw)
    return _gen(interventions=[pb.Intervention(**iv)])


CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    # (id, rpc, request, code, text the message must contain)
    (
        "tokenize-empty",
        "Tokenize",
        pb.TokenizeRequest(text=""),
        C.INVALID_ARGUMENT,
        "tokenize.text",
    ),
    (
        "tokenize-too-long",
        "Tokenize",
        pb.TokenizeRequest(text="word " * 200),
        C.INVALID_ARGUMENT,
        "limit of 48",
    ),
    (
        "tokenize-unknown-model",
        "Tokenize",
        pb.TokenizeRequest(model="nope", text="x"),
        C.NOT_FOUND,
        "nope",
    ),
    (
        "decompose-no-texts",
        "Decompose",
        pb.DecomposeRequest(),
        C.INVALID_ARGUMENT,
        "decompose.texts",
    ),
    (
        "decompose-too-many-texts",
        "Decompose",
        pb.DecomposeRequest(texts=["a"] * 5),
        C.INVALID_ARGUMENT,
        "> limit 4",
    ),
    (
        "decompose-empty-text",
        "Decompose",
        pb.DecomposeRequest(texts=["ok", ""]),
        C.INVALID_ARGUMENT,
        "texts[1]",
    ),
    (
        "decompose-text-too-long",
        "Decompose",
        pb.DecomposeRequest(texts=["word " * 200]),
        C.INVALID_ARGUMENT,
        "limit of 48",
    ),
    (
        "decompose-top-k-limit",
        "Decompose",
        pb.DecomposeRequest(texts=["a"], top_k=33),
        C.INVALID_ARGUMENT,
        "top_k: 33 > limit 32",
    ),
    (
        "decompose-top-k-negative",
        "Decompose",
        pb.DecomposeRequest(texts=["a"], top_k=-1),
        C.INVALID_ARGUMENT,
        "top_k",
    ),
    (
        "decompose-feature-range",
        "Decompose",
        pb.DecomposeRequest(texts=["a"], feature_ids=[64]),
        C.INVALID_ARGUMENT,
        "feature_ids[0]: 64",
    ),
    (
        "decompose-too-many-features",
        "Decompose",
        pb.DecomposeRequest(texts=["a"], feature_ids=list(range(9))),
        C.INVALID_ARGUMENT,
        "> limit 8",
    ),
    (
        "decompose-unknown-sae",
        "Decompose",
        pb.DecomposeRequest(texts=["a"], saes=["nope"]),
        C.NOT_FOUND,
        "nope",
    ),
    (
        "decompose-duplicate-sae",
        "Decompose",
        pb.DecomposeRequest(texts=["a"], saes=["post0", "post0"]),
        C.INVALID_ARGUMENT,
        "unique",
    ),
    (
        "decompose-unknown-model",
        "Decompose",
        pb.DecomposeRequest(model="nope", texts=["a"]),
        C.NOT_FOUND,
        "nope",
    ),
    (
        "generate-no-prompt",
        "Generate",
        pb.GenerateRequest(),
        C.INVALID_ARGUMENT,
        "exactly one of prompt and messages",
    ),
    (
        "generate-both-prompts",
        "Generate",
        _gen(messages=[pb.ChatMessage(role="user", content="x")]),
        C.INVALID_ARGUMENT,
        "exactly one",
    ),
    (
        "generate-prompt-too-long",
        "Generate",
        _gen(prompt="word " * 200),
        C.INVALID_ARGUMENT,
        "limit of 48",
    ),
    (
        "generate-messages-too-long",
        "Generate",
        pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="word " * 200)]),
        C.INVALID_ARGUMENT,
        "generate.messages",
    ),
    (
        "generate-messages-without-a-chat-template",
        "Generate",
        pb.GenerateRequest(model="demo", messages=[pb.ChatMessage(role="user", content="hi")]),
        C.FAILED_PRECONDITION,
        "no chat template",
    ),
    (
        "generate-max-new-tokens",
        "Generate",
        _gen(sampling=pb.SamplingParams(max_new_tokens=241)),
        C.INVALID_ARGUMENT,
        "max_new_tokens: 241 > limit 240",
    ),
    (
        "generate-temperature",
        "Generate",
        _gen(sampling=pb.SamplingParams(temperature=-1)),
        C.INVALID_ARGUMENT,
        "temperature",
    ),
    (
        "generate-temperature-nan",
        "Generate",
        _gen(sampling=pb.SamplingParams(temperature=math.nan)),
        C.INVALID_ARGUMENT,
        "temperature",
    ),
    (
        "generate-top-p",
        "Generate",
        _gen(sampling=pb.SamplingParams(top_p=0)),
        C.INVALID_ARGUMENT,
        "top_p",
    ),
    (
        "generate-top-k",
        "Generate",
        _gen(sampling=pb.SamplingParams(top_k=-3)),
        C.INVALID_ARGUMENT,
        "top_k",
    ),
    (
        "generate-too-many-stops",
        "Generate",
        _gen(sampling=pb.SamplingParams(stop=["a", "b", "c"])),
        C.INVALID_ARGUMENT,
        "stop (count)",
    ),
    (
        "generate-empty-stop",
        "Generate",
        _gen(sampling=pb.SamplingParams(stop=[""])),
        C.INVALID_ARGUMENT,
        "stop[0]",
    ),
    (
        "generate-long-stop",
        "Generate",
        _gen(sampling=pb.SamplingParams(stop=["x" * 17])),
        C.INVALID_ARGUMENT,
        "bytes",
    ),
    (
        "generate-seed",
        "Generate",
        _gen(sampling=pb.SamplingParams(seed=2**63)),
        C.INVALID_ARGUMENT,
        "seed",
    ),
    (
        "steer-too-many",
        "Generate",
        _gen(interventions=[pb.Intervention(mode=ADD, sae="post0", feature=1)] * 4),
        C.INVALID_ARGUMENT,
        "> limit 3",
    ),
    ("steer-no-mode", "Generate", _steer(mode=0), C.INVALID_ARGUMENT, "interventions[0].mode"),
    ("steer-unknown-sae", "Generate", _steer(sae="nope"), C.NOT_FOUND, "nope"),
    ("steer-feature-range", "Generate", _steer(feature=64), C.INVALID_ARGUMENT, "feature: 64"),
    ("steer-value-inf", "Generate", _steer(value=math.inf), C.INVALID_ARGUMENT, "finite"),
    ("steer-value-limit", "Generate", _steer(value=101.0), C.INVALID_ARGUMENT, "> limit 100"),
    (
        "steer-vector-size",
        "Generate",
        _steer(mode=pb.INTERVENTION_MODE_VECTOR, hook_point="resid_post.0", vector=[1.0]),
        C.INVALID_ARGUMENT,
        "vector",
    ),
    (
        "steer-vector-hook",
        "Generate",
        _steer(mode=pb.INTERVENTION_MODE_VECTOR, hook_point="resid_post.9", vector=[1.0] * 32),
        C.INVALID_ARGUMENT,
        "hook_point",
    ),
    (
        "steer-threshold-not-clamp-threshold",
        "Generate",
        _steer(mode=pb.INTERVENTION_MODE_CLAMP, threshold=0.5),
        C.INVALID_ARGUMENT,
        "interventions[0].threshold",
    ),
    (
        "steer-indices",
        "Generate",
        _steer(positions=pb.POSITIONS_INDICES, indices=[99]),
        C.INVALID_ARGUMENT,
        "indices[0]",
    ),
    (
        "track-too-many",
        "Generate",
        _gen(track=[pb.FeatureRef(sae="post0", feature=1)] * 5),
        C.INVALID_ARGUMENT,
        "> limit 4",
    ),
    (
        "track-unknown-sae",
        "Generate",
        _gen(track=[pb.FeatureRef(sae="nope", feature=1)]),
        C.NOT_FOUND,
        "nope",
    ),
    (
        "feature-unknown-sae",
        "GetFeature",
        pb.GetFeatureRequest(sae="nope", feature=1),
        C.NOT_FOUND,
        "nope",
    ),
    (
        "feature-out-of-range",
        "GetFeature",
        pb.GetFeatureRequest(sae="post0", feature=64),
        C.NOT_FOUND,
        "64",
    ),
    (
        "search-empty-query",
        "SearchFeatures",
        pb.SearchFeaturesRequest(query=""),
        C.INVALID_ARGUMENT,
        "query",
    ),
    (
        "search-long-query",
        "SearchFeatures",
        pb.SearchFeaturesRequest(query="q" * 65),
        C.INVALID_ARGUMENT,
        "bytes",
    ),
    (
        "search-limit",
        "SearchFeatures",
        pb.SearchFeaturesRequest(query="cat", limit=21),
        C.INVALID_ARGUMENT,
        "> limit 20",
    ),
    (
        "search-unknown-sae",
        "SearchFeatures",
        pb.SearchFeaturesRequest(query="cat", sae="nope"),
        C.NOT_FOUND,
        "nope",
    ),
]


def _call(server: Server, rpc: str, request: Any, metadata: Any = AUTH) -> Any:
    method: Callable[..., Any] = getattr(server.stub, rpc)
    result = method(request, metadata=metadata, timeout=60)
    return list(result) if rpc == "Generate" else result


@pytest.mark.parametrize(
    ("rpc", "request_", "code", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_its_status_code(
    server: Server, rpc: str, request_: Any, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(server, rpc, request_)
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or "")
    health = health_pb2_grpc.HealthStub(server.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )


GOOD = [
    ("ListModels", pb.ListModelsRequest()),
    ("Tokenize", pb.TokenizeRequest(text="hi")),
    ("Decompose", pb.DecomposeRequest(texts=["hi"])),
    ("Generate", pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_new_tokens=2))),
    ("GetFeature", pb.GetFeatureRequest(sae="post0", feature=1)),
    ("SearchFeatures", pb.SearchFeaturesRequest(query="cat", sae="")),
]


@pytest.mark.parametrize(("rpc", "request_"), GOOD, ids=[g[0] for g in GOOD])
def test_api_keys(server: Server, rpc: str, request_: Any) -> None:
    for metadata in [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", "test-key-0123456789"),),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            _call(server, rpc, request_, metadata)
        assert info.value.code() == C.UNAUTHENTICATED
    _call(server, rpc, request_)  # with the key: OK


def test_health_needs_no_key_and_rejects_unknown_services(server: Server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service="saeserve.v1.Saeserve"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert info.value.code() == C.NOT_FOUND


def test_reflection_lists_the_service(server: Server) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "saeserve.v1.Saeserve" in names
