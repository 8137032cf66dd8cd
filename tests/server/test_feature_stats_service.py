"""InspectFeatures and ContrastFeatures through the live service, over gRPC and HTTP, against
numpy over Decompose's dense output (every feature of the tiny SAEs); errors name the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from saeserve.engine.decompose import decompose
from saeserve.engine.feature_stats import InspectRequest, inspect_features
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest
from saeserve.sae.formats import load_sae
from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, KEY, Server
from tests.engine.test_feature_stats import brute_force

D_SAE = 64
SET_A = ["The cat sat on the mat.", "A cat and a kitten purr."]
SET_B = ["Stock prices fell sharply today.", "Bonds rose."]


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


def as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def dense(engine: ServedModel, texts: list[str]) -> list[dict[str, np.ndarray]]:
    res = decompose(engine, DecomposeRequest(texts=texts, top_k=1, feature_ids=list(range(D_SAE))))
    return [{s.sae_id: s.dense_values.astype(np.float64) for s in t.saes} for t in res.texts]


def test_contrast_over_grpc_and_http_equals_numpy(
    server: Server, engine: ServedModel, http: httpx.Client
) -> None:
    per_text = dense(engine, SET_A + SET_B)
    body = {
        "texts_a": SET_A,
        "texts_b": SET_B,
        "unit": "CONTRAST_UNIT_TOKEN",
        "order_by": "CONTRAST_ORDER_AUROC",
        "top_n": D_SAE,
    }
    resp = server.stub.ContrastFeatures(
        json_format.ParseDict(body, pb.ContrastFeaturesRequest()), metadata=AUTH
    )
    assert [s.sae for s in resp.saes] == ["post0", "post1"]
    for s in resp.saes:
        xa = np.concatenate([t[s.sae] for t in per_text[:2]])
        xb = np.concatenate([t[s.sae] for t in per_text[2:]])

        def plain(r: pb.FeatureContrast) -> SimpleNamespace:
            fields = {f.name: getattr(r, f.name) for f in r.DESCRIPTOR.fields}
            fields["cohens_d"] = r.cohens_d if r.HasField("cohens_d") else None
            return SimpleNamespace(**fields)

        got = SimpleNamespace(
            more_in_a=[plain(r) for r in s.more_in_a], more_in_b=[plain(r) for r in s.more_in_b]
        )
        check_contrast_f32(got, brute_force(xa, xb))
        assert (s.samples_a, s.samples_b) == (len(xa), len(xb))
    assert http.post("/v1/contrast", json=body).json() == as_json(resp)


def check_contrast_f32(got: SimpleNamespace, want: dict[str, np.ndarray]) -> None:
    """The engine test's check, for values that crossed the wire as float32."""
    for r in [*got.more_in_a, *got.more_in_b]:
        for name, key in [("mean_a", "mean_a"), ("mean_diff", "diff"), ("auroc", "auroc")]:
            assert getattr(r, name) == pytest.approx(want[key][r.feature], rel=1e-5, abs=1e-6)
    key = want["auroc"] - 0.5  # ranked by AUROC, ties by mean_diff, then id
    up = sorted(np.flatnonzero(key > 0).tolist(), key=lambda f: (-key[f], -want["diff"][f], f))
    down = sorted(np.flatnonzero(key < 0).tolist(), key=lambda f: (key[f], want["diff"][f], f))
    assert [r.feature for r in got.more_in_a] == up
    assert [r.feature for r in got.more_in_b] == down


def test_inspect_over_grpc_and_http_equals_aggregation_by_hand(
    server: Server, engine: ServedModel, http: httpx.Client
) -> None:
    text = "The cat sat on the mat, and the cat sat again."
    [acts] = dense(engine, [text])
    body = {"text": text, "saes": ["post1"], "top_n": D_SAE, "max_positions": 2}
    resp = server.stub.InspectFeatures(
        json_format.ParseDict(body, pb.InspectFeaturesRequest()), metadata=AUTH
    )
    [s] = resp.saes
    a = acts["post1"]
    count = (a > 0).sum(0)
    fired = np.flatnonzero(count)
    assert s.active_features == len(fired)
    assert [f.feature for f in s.features] == sorted(fired, key=lambda f: (-count[f], f))
    for f in s.features:
        where = np.flatnonzero(a[:, f.feature] > 0)
        assert f.count == count[f.feature]
        assert list(f.positions) == where[:2].tolist()
        assert f.max_position == int(np.argmax(a[:, f.feature]))
        assert f.mean_over_tokens == pytest.approx(a[:, f.feature].mean(), rel=1e-5)
    assert list(resp.tokens.ids) == engine.lm.tokenizer(text)["input_ids"]
    assert http.post("/v1/inspect", json=body).json() == as_json(resp)


def test_inspect_messages_uses_the_chat_template(server: Server, engine: ServedModel) -> None:
    messages = [("system", "Be brief."), ("user", "Hi there, cat")]
    resp = server.stub.InspectFeatures(
        pb.InspectFeaturesRequest(
            messages=[pb.ChatMessage(role=r, content=c) for r, c in messages], top_n=5
        ),
        metadata=AUTH,
    )
    ids = engine.lm.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert list(resp.tokens.ids) == list(ids)
    want = inspect_features(engine, list(ids), InspectRequest(top_n=5))
    for g, w in zip(resp.saes, want, strict=True):
        assert [f.feature for f in g.features] == [f.feature for f in w.features]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ContrastFeaturesRequest(texts_a=["a"]), "contrast_features.texts_b"),
        (pb.ContrastFeaturesRequest(texts_a=["a"] * 65, texts_b=["b"]), "contrast_features.texts_a"),
        (pb.ContrastFeaturesRequest(texts_a=["a"], texts_b=["b", ""]), "contrast_features.texts_b[1]"),
        (pb.ContrastFeaturesRequest(texts_a=["a"], texts_b=["b"], top_n=-1), "contrast_features.top_n"),
        (pb.ContrastFeaturesRequest(texts_a=["a"], texts_b=["b"], unit=7), "contrast_features.unit"),
        (pb.InspectFeaturesRequest(), "inspect_features: exactly one of text and messages"),
        (pb.InspectFeaturesRequest(text="a", max_positions=5000), "inspect_features.max_positions"),
        (pb.InspectFeaturesRequest(text="a", top_n=100000), "inspect_features.top_n"),
        (pb.InspectFeaturesRequest(text="a " * 500), "inspect_features.text"),
        (pb.InspectFeaturesRequest(text="a", saes=["post0", "post0"]), "saes"),
    ],
)  # fmt: skip
def test_errors_name_the_field(
    server: Server, http: httpx.Client, request_: Any, field: str
) -> None:
    method = type(request_).__name__.removesuffix("Request")
    with pytest.raises(grpc.RpcError) as err:
        getattr(server.stub, method)(request_, metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    path = {"ContrastFeatures": "/v1/contrast", "InspectFeatures": "/v1/inspect"}[method]
    reply = http.post(path, json=as_json(request_))
    assert reply.status_code == 400
    assert field in reply.json()["error"]["message"]
