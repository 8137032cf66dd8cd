"""The JSON API over real HTTP (Serve's HTTP proxy), checked against the same calls over gRPC.

Both transports run the same operations, so each JSON answer must be the gRPC answer in
the messages' JSON mapping, field for field; errors carry the OpenAI error shape with
the field named; a client that leaves a stream stops its generation.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, KEY, LIMITS, Server
from tests.server.test_metrics_endpoint import _wait_until_stopped, scrape, value, wait_for


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.http_url, headers=headers, timeout=60) as client:
        yield client


def as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of a server-sent event stream, ``[DONE]`` as a string."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_tokenize_decompose_feature_and_search_equal_grpc(
    server: Server, http: httpx.Client
) -> None:
    tok = {"text": "Hello wörld"}
    assert http.post("/v1/tokenize", json=tok).json() == as_json(
        server.stub.Tokenize(pb.TokenizeRequest(**tok), metadata=AUTH)
    )
    dec = {"texts": ["The cat sat.", "Hi"], "top_k": 3, "feature_ids": [1, 5]}
    got = http.post("/v1/decompose", json=dec).json()
    want = as_json(server.stub.Decompose(pb.DecomposeRequest(**dec), metadata=AUTH))
    assert got["texts"][1]["tokens"] == want["texts"][1]["tokens"]
    for g, w in zip(got["texts"][0]["saes"], want["texts"][0]["saes"], strict=True):
        assert g["top_ids"] == w["top_ids"]
        assert g["top_values"] == pytest.approx(w["top_values"], abs=1e-5)
        assert g["dense_values"] == pytest.approx(w["dense_values"], abs=1e-5)
    feature = http.get("/v1/saes/post0/features/3").json()
    assert feature == as_json(
        server.stub.GetFeature(pb.GetFeatureRequest(sae="post0", feature=3), metadata=AUTH)
    )
    assert feature["has_statistics"] is True and isinstance(feature["tokens_indexed"], str)
    found = http.get("/v1/features/search", params={"q": "cat", "limit": 3}).json()
    assert found == as_json(
        server.stub.SearchFeatures(pb.SearchFeaturesRequest(query="cat", limit=3), metadata=AUTH)
    )


def test_generate_streams_the_grpc_chunks(server: Server, http: httpx.Client) -> None:
    body = {
        "prompt": "The cat sat",
        "sampling": {"max_new_tokens": 6, "temperature": 0.7, "seed": "11"},
        "interventions": [
            {"mode": "INTERVENTION_MODE_ADD", "sae": "post0", "feature": 5, "value": 40.0}
        ],
        "include_baseline": True,
        "logprobs": True,
        "top_logprobs": 3,
    }
    with http.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        got = events(response)
    assert got[-1] == "[DONE]"
    request = json_format.ParseDict(body, pb.GenerateRequest())
    want = [as_json(c) for c in server.stub.Generate(request, metadata=AUTH)]

    def by_variant(chunks: list[Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for c in chunks:  # the two variants interleave in whatever order steps finish
            out.setdefault(c["variant"], []).append(c)
        return out

    assert by_variant(got[:-1]) == by_variant(want)
    assert all(len(c["top_logprobs"]) == 3 for c in got[:-1])


def test_errors_name_the_field_with_the_right_status(http: httpx.Client) -> None:
    def error(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    over = {"texts": ["a"], "top_k": LIMITS.max_top_k + 1}
    e = error(http.post("/v1/decompose", json=over), 400)
    assert e["param"] == "decompose.top_k" and str(LIMITS.max_top_k) in e["message"]
    e = error(http.post("/v1/decompose", json={"texts": ["a"], "topk": 3}), 400)
    assert e["param"] == "decompose" and "topk" in e["message"]
    e = error(http.post("/v1/tokenize", content=b"{nope", headers=_JSON), 400)
    assert "not valid JSON" in e["message"]
    e = error(http.post("/v1/tokenize", json={"model": "nope", "text": "a"}), 404)
    assert e["param"] == "tokenize.model" and e["code"] == "not_found"
    e = error(http.get("/v1/saes/post0/features/99999"), 404)
    assert e["param"] == "get_feature.feature"
    e = error(http.get("/v1/saes/post0/features/-1"), 400)
    assert e["param"] == "feature"
    bad_steer = {"prompt": "a", "interventions": [{"mode": "INTERVENTION_MODE_ADD", "sae": "x"}]}
    e = error(http.post("/v1/generate", json=bad_steer), 404)
    assert "x" in e["message"]
    e = error(
        http.post("/v1/tokenize", json={"text": "a"}, headers={"authorization": "Bearer no"}), 401
    )
    assert e["type"] == "authentication_error"
    e = error(http.get("/v1/models", headers={"authorization": ""}), 401)


_JSON = {"content-type": "application/json"}


def test_bodies_over_the_limit_are_413_before_parsing(server: Server, http: httpx.Client) -> None:
    limit = server.settings.max_http_body_bytes
    big = b'{"text": "' + b"a" * limit + b'"}'
    response = http.post("/v1/tokenize", content=big, headers=_JSON)
    assert response.status_code == 413
    assert str(limit) in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"text": "'
        for _ in range(limit // 65536 + 1):
            yield b"a" * 65536
        yield b'"}'

    response = http.post("/v1/tokenize", content=chunks(), headers=_JSON)
    assert response.status_code == 413


def test_openapi_describes_every_route_with_the_proto_schemas(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/tokenize",
        "/v1/decompose",
        "/v1/generate",
        "/v1/saes/{sae}/features/{feature}",
        "/v1/features/search",
    } <= paths
    schemas = spec["components"]["schemas"]
    fields = set(schemas["saeserve.v1.DecomposeRequest"]["properties"])
    assert fields == {f.name for f in pb.DecomposeRequest.DESCRIPTOR.fields}
    body = spec["paths"]["/v1/decompose"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/saeserve.v1.DecomposeRequest"
    assert http.get("/docs").status_code == 200


def test_http_requests_are_counted_by_transport(server: Server, http: httpx.Client) -> None:
    before = scrape(server)
    http.post("/v1/tokenize", json={"text": "counted"}).raise_for_status()

    def counted() -> bool:
        labels = {"rpc": "Tokenize", "code": "OK", "transport": "http"}
        now = scrape(server)
        return value(now, "ray_saeserve_requests_total", **labels) > value(
            before, "ray_saeserve_requests_total", **labels
        )

    assert wait_for(counted), "the HTTP Tokenize was not counted with transport=http"


def test_a_client_that_leaves_a_stream_stops_its_generation(
    server: Server, http: httpx.Client
) -> None:
    before = scrape(server)
    body = {
        "model": "demo",
        "prompt": "Once",
        "sampling": {"max_new_tokens": 240, "temperature": 0, "ignore_eos": True},
    }
    with http.stream("POST", "/v1/generate", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one token read, then the connection closes
    _wait_until_stopped(server, before, 1)
    generated = value(scrape(server), "ray_saeserve_tokens_generated_total") - value(
        before, "ray_saeserve_tokens_generated_total"
    )
    assert generated < 240


def test_more_streams_than_serves_default_run_at_once(server: Server) -> None:
    """Eight HTTP streams all get their first token before any of them ends (Serve's
    proxy would otherwise hold all but 5 requests per ingress replica until others end)."""
    body = {
        "model": "demo",
        "prompt": "Once",
        "sampling": {"max_new_tokens": 120, "temperature": 0, "ignore_eos": True},
    }
    firsts: list[float] = []
    ends: list[float] = []

    def stream() -> None:
        with (
            httpx.Client(base_url=server.http_url, timeout=120) as client,
            client.stream(
                "POST", "/v1/generate", json=body, headers={"authorization": f"Bearer {KEY}"}
            ) as response,
        ):
            seen = False
            for line in response.iter_lines():
                if line.startswith("data: {") and not seen:
                    firsts.append(time.monotonic())
                    seen = True
            ends.append(time.monotonic())

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(firsts) == len(ends) == 8
    assert max(firsts) < min(ends)
