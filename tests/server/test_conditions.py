"""Conditional steering and stop conditions through the live server: gRPC, the JSON API and
the OpenAI routes, each checked against the engine run in-process (itself checked against
manual hooks in tests/engine/test_conditions.py), and their errors naming the field."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
from google.protobuf import json_format

from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import (
    FeatureCondition,
    FinishReason,
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
    TokenEvent,
    TrackedFeature,
    Variant,
)
from saeserve.sae.formats import load_sae
from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, KEY, LIMITS, Server
from tests.server.test_http import as_json, events

PROMPT = "The cat sat"
N_NEW = 10


@pytest.fixture(scope="module")
def engine(server: Server) -> ServedModel:
    served = ServedModel.load(server.model_path, name="tiny")
    for p in server.sae_paths:
        served.add_sae(load_sae(p))
    return served


def _engine_run(engine: ServedModel, **kw: Any) -> list[TokenEvent]:
    ids = engine.lm.tokenizer(PROMPT)["input_ids"]
    sampling = SamplingParams(max_new_tokens=N_NEW, temperature=0, ignore_eos=True)
    return list(generate(engine, GenerateRequest(ids, sampling, **kw)))


@pytest.fixture(scope="module")
def case(engine: ServedModel) -> tuple[int, float]:
    """(g, t): post0's feature g first exceeds t a few steps into the steered text below."""
    every = [TrackedFeature("post0", f) for f in range(64)]
    steered = _engine_run(engine, interventions=[_steer(None)], track=every)
    seen = np.array([e.tracked for e in steered])  # [steps, 64] post0 at each input position
    for g in range(64):
        m = int(np.argmax(seen[:, g]))
        if m >= 2 and seen[m, g] > seen[:m, g].max():
            return g, float((seen[m, g] + seen[:m, g].max()) / 2)
    raise AssertionError("no feature peaks mid-way")


def _steer(condition: FeatureCondition | None) -> Intervention:
    return Intervention(InterventionMode.ADD, 40.0, "post1", 5, condition=condition)


def _body(g: int, t: float) -> dict[str, Any]:
    """The Generate request of these tests, in the JSON mapping."""
    return {
        "prompt": PROMPT,
        "sampling": {"max_new_tokens": N_NEW, "temperature": 0, "ignore_eos": True},
        "interventions": [
            {
                "mode": "INTERVENTION_MODE_ADD",
                "sae": "post1",
                "feature": 5,
                "value": 40.0,
                "condition": {"sae": "post0", "feature": g, "threshold": 0},
            }
        ],
        "include_baseline": True,
        "stop_conditions": [
            {"sae": "post0", "feature": g, "threshold": 1e9},
            {"sae": "post0", "feature": g, "threshold": t},
        ],
    }


def test_grpc_equals_the_engine(
    server: Server, engine: ServedModel, case: tuple[int, float]
) -> None:
    g, t = case
    request = json_format.ParseDict(_body(g, t), pb.GenerateRequest())
    chunks = list(server.stub.Generate(request, metadata=AUTH))
    want = _engine_run(
        engine,
        interventions=[_steer(FeatureCondition("post0", g, 0.0))],
        include_baseline=True,
        stop_conditions=[FeatureCondition("post0", g, 1e9), FeatureCondition("post0", g, t)],
    )
    variants = {Variant.STEERED: pb.VARIANT_STEERED, Variant.BASELINE: pb.VARIANT_BASELINE}
    for variant, v in variants.items():
        got = [c for c in chunks if c.variant == v]
        ev = [e for e in want if e.variant is variant]
        assert [c.token_id for c in got] == [e.token_id for e in ev]
        if ev[-1].finish_reason is FinishReason.CONDITION:
            assert got[-1].finish_reason == pb.FINISH_REASON_CONDITION
            assert got[-1].stop_condition == ev[-1].stop_condition == 1
            assert got[-1].stop_activation == pytest.approx(ev[-1].stop_activation, abs=1e-6)
            assert got[-1].usage.generated_tokens == len(got)
        else:
            assert not got[-1].HasField("stop_condition")
        assert not any(c.HasField("stop_condition") for c in got[:-1])
    steered = [c for c in chunks if c.variant == pb.VARIANT_STEERED]
    assert steered[-1].finish_reason == pb.FINISH_REASON_CONDITION
    assert 3 <= len(steered) < N_NEW


def test_http_json_api_and_openai_route_equal_grpc(server: Server, case: tuple[int, float]) -> None:
    g, t = case
    body = _body(g, t)
    request = json_format.ParseDict(body, pb.GenerateRequest())
    want = [as_json(c) for c in server.stub.Generate(request, metadata=AUTH)]
    headers = {"authorization": f"Bearer {KEY}"}
    with (
        httpx.Client(base_url=server.http_url, headers=headers, timeout=60) as http,
        http.stream("POST", "/v1/generate", json=body) as response,
    ):
        assert response.status_code == 200
        got = events(response)[:-1]

    def by_variant(chunks: list[Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for c in chunks:
            out.setdefault(c["variant"], []).append(c)
        return out

    assert by_variant(got) == by_variant(want)
    final = by_variant(got)["VARIANT_STEERED"][-1]
    assert final["finish_reason"] == "FINISH_REASON_CONDITION" and final["stop_condition"] == 1

    steered_text = "".join(c["text"] for c in by_variant(want)["VARIANT_STEERED"])
    saeserve = {
        "interventions": [{**body["interventions"][0], "mode": "add"}],
        "stop_conditions": body["stop_conditions"],
        "ignore_eos": True,
    }
    with openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=KEY, max_retries=0) as client:
        completion = client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=N_NEW,
            temperature=0,
            extra_body={"saeserve": saeserve},
        )
        choice = completion.choices[0]
        assert choice.text == steered_text and choice.finish_reason == "stop"
        extra: Any = choice.model_extra
        assert extra["saeserve"]["finish_reason"] == "condition"
        assert extra["saeserve"]["stop_condition"] == 1
        assert extra["saeserve"]["stop_activation"] == pytest.approx(final["stop_activation"])
        stream = client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=N_NEW,
            temperature=0,
            stream=True,
            extra_body={"saeserve": saeserve},
        )
        last = [c for c in stream if c.choices][-1].choices[0]
        assert last.finish_reason == "stop"
        assert (last.model_extra or {})["saeserve"]["stop_condition"] == 1


def _grpc_error(server: Server, body: dict[str, Any]) -> grpc.RpcError:
    request = json_format.ParseDict(body, pb.GenerateRequest())
    with pytest.raises(grpc.RpcError) as info:
        list(server.stub.Generate(request, metadata=AUTH))
    return info.value


def test_errors_name_the_field(server: Server) -> None:
    def cond(**kw: Any) -> dict[str, Any]:
        return {"prompt": "a", "interventions": [{**_body(0, 0)["interventions"][0], **kw}]}

    e = _grpc_error(server, cond(condition={"sae": "nope", "feature": 0}))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert e.details().startswith("interventions[0].condition.sae: unknown SAE 'nope'")
    e = _grpc_error(server, cond(condition={"sae": "post0", "feature": 64}))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details().startswith("interventions[0].condition.feature: 64 must be in [0, 64)")
    # post1 (resid_post.1) is read after post0's point: refused, not read from the future
    e = _grpc_error(server, cond(sae="post0", condition={"sae": "post1", "feature": 0}))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details().startswith("interventions[0].condition.sae: 'post1' is hooked at")
    stops = [{"sae": "post0", "feature": 0}] * (LIMITS.max_stop_conditions + 1)
    e = _grpc_error(server, {"prompt": "a", "stop_conditions": stops})
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == (
        f"generate.stop_conditions (count): {len(stops)} > limit {LIMITS.max_stop_conditions}"
    )
    nan = {"prompt": "a", "stop_conditions": [{"sae": "post0", "feature": 0, "threshold": "NaN"}]}
    e = _grpc_error(server, nan)
    assert e.details().startswith("generate.stop_conditions[0].threshold: must be finite")

    with httpx.Client(
        base_url=server.http_url, headers={"authorization": f"Bearer {KEY}"}, timeout=60
    ) as http:
        r = http.post("/v1/generate", json=nan)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "generate.stop_conditions[0].threshold"
        r = http.post(
            "/v1/completions",
            json={
                "model": "tiny",
                "prompt": "a",
                "saeserve": {"stop_conditions": [{"sae": "post0", "feature": 99}]},
            },
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "saeserve.stop_conditions[0].feature"
