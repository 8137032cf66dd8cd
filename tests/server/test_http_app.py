"""The HTTP app's shared layer in-process (FastAPI's TestClient, no Ray): CORS is off unless
origins are configured, and bodies over the limit are refused before any route runs."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from saeserve.server.http.app import build_http_app
from saeserve.server.operations import Operations
from saeserve.server.settings import ServerSettings


class _UnusedHandle:
    """Stands in for a model's DeploymentHandle; these tests never reach a replica."""

    def options(self, **_: Any) -> _UnusedHandle:
        return self


def _client(**settings: Any) -> TestClient:
    config = ServerSettings.load(None, **settings)
    ops = Operations(config, {m.name: _UnusedHandle() for m in config.models})  # type: ignore[misc]
    return TestClient(build_http_app(ops, config))


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_cors_is_off_by_default() -> None:
    response = _client().options("/v1/tokenize", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_the_configured_origins_only() -> None:
    client = _client(cors_origins=["https://app.example"])
    allowed = client.options("/v1/tokenize", headers=PREFLIGHT)
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options("/v1/tokenize", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_a_body_over_the_limit_is_413_and_one_under_it_reaches_the_route() -> None:
    client = _client(max_http_body_bytes=2048, api_keys=["k"])
    over = client.post(
        "/v1/tokenize", content=b"x" * 2049, headers={"content-type": "application/json"}
    )
    assert over.status_code == 413 and "2048" in over.json()["error"]["message"]
    under = client.post("/v1/tokenize", json={"text": "hi"})
    assert under.status_code == 401  # it got past the limit, to the operation's key check


def test_a_feature_page_answers_for_sae_ids_with_slashes() -> None:
    """Gemma Scope ids read like layer_12/width_16k/average_l0_82; the browser sends the
    slashes encoded, the server decodes them before routing."""
    client = _client()
    for path in ("/saes/resid_post.2/features/3", "/saes/layer_12%2Fwidth_16k%2Favg/features/3"):
        page = client.get(path)
        assert page.status_code == 200 and "pages/feature.js" in page.text
