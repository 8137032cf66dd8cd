"""The HTTP transport's error map: a status (``status.py``) becomes an HTTP response.

Every HTTP error has the OpenAI error shape, so the ``openai`` SDKs raise their usual
exceptions: ``{"error": {"message", "type", "param", "code"}}``. ``param`` names the
request field the message is about (the message starts with it: ``decompose.top_k: 900 >
limit 256``); the OpenAI routes translate proto field paths to their own parameter names
(``generate.sampling.max_new_tokens`` -> ``max_tokens``). 429 and 503 carry
``Retry-After``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import grpc
from fastapi.responses import JSONResponse

from saeserve.server.status import RpcStatus

RETRY_AFTER_S = 1
"""Seconds a client is told to wait after a 429 or a 503 when the status gives no time."""

_HTTP_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    code: (http, type_)
    for codes, http, type_ in [
        (("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"), 400, "invalid_request_error"),
        (("UNAUTHENTICATED",), 401, "authentication_error"),
        (("PERMISSION_DENIED",), 403, "permission_error"),
        (("NOT_FOUND",), 404, "not_found_error"),
        (("ALREADY_EXISTS", "ABORTED"), 409, "conflict_error"),
        (("CANCELLED",), 499, "cancelled"),
        (("RESOURCE_EXHAUSTED",), 429, "rate_limit_error"),
        (("UNIMPLEMENTED",), 501, "server_error"),
        (("UNAVAILABLE",), 503, "service_unavailable_error"),
        (("DEADLINE_EXCEEDED",), 504, "timeout_error"),
    ]
    for code in (grpc.StatusCode[name] for name in codes)
}
"""gRPC code -> (HTTP status, OpenAI error type); anything else is 500 server_error."""

_FIELD = re.compile(
    r"^([A-Za-z_][\w.]*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*)(?: \([^)]*\))?:"
)
"""A message's leading field path: ``generate.interventions[0].value (absolute):``."""


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, (500, "server_error"))[0]


def field_of(message: str) -> str | None:
    """The field path a message starts with, or None."""
    match = _FIELD.match(message)
    return match.group(1) if match else None


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


ParamNames = Mapping[str, str]
"""Field-path prefix -> the name a client knows the field by (``generate.prompt`` -> ``prompt``)."""


def status_body(status: RpcStatus, params: ParamNames | None = None) -> dict[str, Any]:
    """``status`` in the OpenAI error shape; ``params`` renames the field path for
    ``param`` (longest matching prefix)."""
    _, type_ = _HTTP_STATUS.get(status.code, (500, "server_error"))
    param = field_of(status.details)
    if param is not None and params:
        for prefix in sorted(params, key=len, reverse=True):
            if param == prefix or param.startswith((prefix + ".", prefix + "[")):
                param = params[prefix] + param[len(prefix) :]
                break
    return error_body(status.details, type_=type_, param=param, code=status.code.name.lower())


def error_response(status: RpcStatus, params: ParamNames | None = None) -> JSONResponse:
    """``status`` as an HTTP response (429 and 503 with ``Retry-After``)."""
    http = http_status(status.code)
    retry = RETRY_AFTER_S if status.retry_after_s is None else math.ceil(status.retry_after_s)
    headers = {"Retry-After": str(retry)} if http in (429, 503) else None
    return JSONResponse(status_body(status, params), status_code=http, headers=headers)


def invalid(message: str, param: str | None) -> JSONResponse:
    """A 400 for input rejected by the HTTP layer itself (JSON syntax, body shape)."""
    body = error_body(message, type_="invalid_request_error", param=param, code="invalid_argument")
    return JSONResponse(body, status_code=400)
