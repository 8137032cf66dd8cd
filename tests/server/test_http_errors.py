"""The HTTP error map: each status becomes the HTTP code and OpenAI error shape the SDKs
expect, ``param`` is the field the message names, renamed for the OpenAI routes."""

from __future__ import annotations

import json

import grpc
import pytest

from saeserve.server.http.errors import error_response, field_of
from saeserve.server.http.openai_routes import CHAT_PARAMS, COMPLETION_PARAMS
from saeserve.server.status import RpcStatus

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "http", "type_"),
    [
        (Code.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (Code.FAILED_PRECONDITION, 400, "invalid_request_error"),
        (Code.UNAUTHENTICATED, 401, "authentication_error"),
        (Code.NOT_FOUND, 404, "not_found_error"),
        (Code.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
        (Code.UNAVAILABLE, 503, "service_unavailable_error"),
        (Code.DEADLINE_EXCEEDED, 504, "timeout_error"),
        (Code.INTERNAL, 500, "server_error"),
    ],
)
def test_each_code_has_its_http_status_and_type(code: Code, http: int, type_: str) -> None:
    response = error_response(RpcStatus(code, "decompose.top_k: 900 > limit 256"))
    assert response.status_code == http
    error = json.loads(bytes(response.body))["error"]
    assert error == {
        "message": "decompose.top_k: 900 > limit 256",
        "type": type_,
        "param": "decompose.top_k",
        "code": code.name.lower(),
    }
    assert (response.headers.get("retry-after") == "1") == (http in (429, 503))


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (
            "generate.interventions[0].value (absolute): 2000 > limit 1000",
            "generate.interventions[0].value",
        ),
        ("decompose.texts (count): 70 > limit 64", "decompose.texts"),
        ("interventions[1].feature: 9 must be in [0, 4)", "interventions[1].feature"),
        ("the request queue is full", None),
        ("internal server error (request id 12ab); please report it", None),
    ],
)
def test_the_field_is_read_from_the_message(message: str, field: str | None) -> None:
    assert field_of(message) == field


def test_openai_routes_name_their_own_parameters() -> None:
    def param(message: str, names: dict[str, str]) -> str:
        body = json.loads(
            bytes(error_response(RpcStatus(Code.INVALID_ARGUMENT, message), names).body)
        )
        return str(body["error"]["param"])

    assert (
        param("generate.sampling.max_new_tokens: 600 > limit 512", dict(CHAT_PARAMS))
        == "max_tokens"
    )
    assert param("generate.messages: 900 tokens > limit 48", dict(CHAT_PARAMS)) == "messages"
    assert param("generate.prompt: must not be empty", dict(COMPLETION_PARAMS)) == "prompt"
    assert param("generate.top_logprobs: 30 > limit 20", dict(COMPLETION_PARAMS)) == "logprobs"
    assert (
        param("interventions[0].feature: 9 must be in [0, 4)", dict(CHAT_PARAMS))
        == "saeserve.interventions[0].feature"
    )
