"""Attribute and AttributeFeature on the session's real Ray Serve instance: over gRPC equal
to the engine run in this process, over HTTP equal to gRPC; bad fields are named."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from saeserve.engine.attribution import (
    AttributionRequest,
    FeatureInputRequest,
    attribute,
    attribute_feature,
)
from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import GenerateRequest, SamplingParams
from saeserve.sae.formats import load_sae
from saeserve.v1 import saeserve_pb2 as pb
from saeserve_client import AsyncSaeserveClient, SaeserveClient
from tests.conftest import AUTH, KEY, LIMITS, Server
from tests.server.test_client_real import _cli
from tests.server.test_http import as_json

PROMPT = "The cat sat on the"


@pytest.fixture(scope="module")
def engine(server: Server) -> ServedModel:
    served = ServedModel.load(server.model_path, name="tiny")
    for p in server.sae_paths:
        served.add_sae(load_sae(p))
    return served


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.http_url, headers=headers, timeout=60) as client:
        yield client


def test_attribute_over_grpc_equals_the_engine(server: Server, engine: ServedModel) -> None:
    """Also while the same replica generates: both answers stay the engine's."""
    ids = engine.lm.tokenizer(PROMPT)["input_ids"]
    request = pb.AttributeRequest(
        prompt=PROMPT, target=pb.TokenChoice(id=7), contrast=pb.TokenChoice(id=9), top_n=4
    )
    sampling = pb.SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    stream = server.stub.Generate(
        pb.GenerateRequest(prompt="Once upon a time", sampling=sampling), metadata=AUTH
    )
    generated = [next(stream).token_id]  # the stream is running
    got = server.stub.Attribute(request, metadata=AUTH)
    generated += [c.token_id for c in stream]
    greedy = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    prompt_ids = engine.lm.tokenizer("Once upon a time")["input_ids"]
    assert generated == [e.token_id for e in generate(engine, GenerateRequest(prompt_ids, greedy))]
    want = attribute(engine, AttributionRequest(ids, target=7, contrast=9, top_n=4))
    assert list(got.tokens.ids) == ids
    assert (got.target.token_id, got.contrast.token_id) == (7, 9)
    assert got.metric == pytest.approx(want.metric, abs=1e-5)
    assert got.target.probability == pytest.approx(want.target.probability, abs=1e-6)
    assert [s.sae for s in got.saes] == [s.sae_id for s in want.saes] == ["post0", "post1"]
    for g, w in zip(got.saes, want.saes, strict=True):
        assert (g.hook_point, g.active_features, g.has_direct_path) == (
            w.hook_point,
            w.active,
            True,
        )
        for got_list, want_list in [
            (g.top_direct_positive, w.direct_positive),
            (g.top_direct_negative, w.direct_negative),
            (g.top_total_positive, w.total_positive),
            (g.top_total_negative, w.total_negative),
        ]:
            assert [e.feature for e in got_list] == [e.feature for e in want_list]
            assert [e.total_effect for e in got_list] == pytest.approx(
                [e.total for e in want_list], abs=1e-5
            )
            assert [e.direct_effect for e in got_list] == pytest.approx(
                [e.direct for e in want_list], abs=1e-5
            )
        assert g.total.whole == pytest.approx(w.total.whole, abs=1e-5)
        assert g.direct.error == pytest.approx(w.direct.error, abs=1e-5)


def test_attribute_feature_over_grpc_equals_the_engine(server: Server, engine: ServedModel) -> None:
    ids = engine.lm.tokenizer(PROMPT)["input_ids"]
    request = pb.AttributeFeatureRequest(prompt=PROMPT, sae="post1", feature=3, position=2)
    got = server.stub.AttributeFeature(request, metadata=AUTH)
    want = attribute_feature(engine, FeatureInputRequest(ids, "post1", 3, position=2))
    assert got.position == 2
    assert list(got.attributions) == pytest.approx(want.attributions, abs=1e-5)
    assert [p.position for p in got.top_positive] == want.top_positive
    assert [p.position for p in got.top_negative] == want.top_negative
    assert got.pre_activation == pytest.approx(want.pre_activation, abs=1e-5)

    with pytest.raises(grpc.RpcError) as err:
        request = pb.AttributeFeatureRequest(prompt=PROMPT, sae="post1", feature=64)
        server.stub.AttributeFeature(request, metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("attribute_feature.feature: 64 must be in [0, 64)")


def test_http_equals_grpc_and_names_bad_fields(server: Server, http: httpx.Client) -> None:
    body: dict[str, Any] = {"prompt": PROMPT, "target": {"text": " the"}, "top_n": 3}
    response = http.post("/v1/attribute", json=body)
    assert response.status_code == 200, response.text
    request = pb.AttributeRequest(prompt=PROMPT, target=pb.TokenChoice(text=" the"), top_n=3)
    assert response.json() == as_json(server.stub.Attribute(request, metadata=AUTH))
    feature = {"prompt": PROMPT, "sae": "post0", "feature": 5, "top_n": 2}
    response = http.post("/v1/attribute/feature", json=feature)
    assert response.status_code == 200, response.text
    request2 = pb.AttributeFeatureRequest(prompt=PROMPT, sae="post0", feature=5, top_n=2)
    assert response.json() == as_json(server.stub.AttributeFeature(request2, metadata=AUTH))

    def error(path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
        response = http.post(path, json=body)
        assert response.status_code == status, response.text
        e: dict[str, Any] = response.json()["error"]
        return e

    top = LIMITS.max_attribution_top_n
    e = error("/v1/attribute", {"prompt": PROMPT, "top_n": top + 1}, 400)
    assert e["param"] == "attribute.top_n" and f"> limit {top}" in e["message"]
    e = error("/v1/attribute", {"prompt": PROMPT, "target": {"text": " the cat"}}, 400)
    assert e["param"] == "attribute.target.text"
    e = error("/v1/attribute", {"prompt": PROMPT, "contrast": {"id": 10**6}}, 400)
    assert e["param"] == "attribute.contrast.id"
    e = error("/v1/attribute", {"prompt": "", "saes": ["post0"]}, 400)
    assert e["param"] == "attribute.prompt"
    e = error("/v1/attribute", {"prompt": PROMPT, "saes": ["nope"]}, 404)
    assert e["param"] == "attribute.saes[0]"
    e = error("/v1/attribute/feature", {"prompt": PROMPT, "sae": "post0", "position": 99}, 400)
    assert e["param"] == "attribute_feature.position"
    e = error("/v1/attribute/feature", {"prompt": PROMPT, "feature": 1}, 400)
    assert e["param"] == "attribute_feature.sae"

    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/attribute", "/v1/attribute/feature"} <= set(paths)


def test_client_and_cli_on_the_demo(server: Server) -> None:
    prompt = "The cat sat on the"
    request = pb.AttributeRequest(
        model="demo", prompt=prompt, target=pb.TokenChoice(text=" mat"), top_n=3
    )
    want = server.stub.Attribute(request, metadata=AUTH)
    with SaeserveClient(server.target, api_key=KEY) as client:
        got = client.attribute(prompt, target=" mat", top_n=3, model="demo")
    assert got.target.token == " mat" and got.contrast is None
    assert got.metric == pytest.approx(want.metric, abs=1e-6)
    for g, w in zip(got.saes, want.saes, strict=True):
        assert [e.feature for e in g.top_total_positive] == [
            e.feature for e in w.top_total_positive
        ]
        assert g.total.whole == pytest.approx(w.total.whole, abs=1e-6)
    assert got["resid_post.2"].active_features == want.saes[1].active_features

    async def feature() -> Any:
        async with AsyncSaeserveClient(server.target, api_key=KEY) as client:
            return await client.attribute_feature(
                prompt, "resid_post.2", 1224, position=3, model="demo"
            )

    inputs = asyncio.run(feature())
    assert inputs.position == 3 and inputs.attributions.shape == (4,)

    out = _cli(server, "attribute", prompt, "--token", " mat", "--top-n", "3", "--model", "demo")
    assert '" mat"' in out and "resid_post.2 @ resid_post.2" in out and "total +" in out
    args = ("attribute-feature", prompt, "resid_post.2", "1224", "--json", "--position", "3")
    printed = json.loads(_cli(server, *args, "--model", "demo"))
    assert printed["attributions"] == pytest.approx(inputs.attributions.tolist(), abs=1e-6)
