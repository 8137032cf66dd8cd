"""The HTTP transport: one FastAPI app per ingress replica, served by Ray Serve's HTTP proxy.

``build_http_app(ops, settings)`` mounts the OpenAI-compatible routes
(``openai_routes``), the JSON API (``json_api``) and the web UI (``server/ui``) over the
replica's ``Operations``, and adds what every route shares: a body size limit
(``settings.max_http_body_bytes``, 413 before parsing), CORS when
``settings.cors_origins`` names origins, and one error map (``errors``): an
``OperationFailed`` becomes its status's HTTP answer, a request the HTTP layer cannot
parse a 400 naming the field. ``/openapi.json`` and ``/docs`` describe every route; the
proto-derived schemas are added to its components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saeserve.errors import SaeserveError
from saeserve.server import metrics
from saeserve.server.http.errors import error_body, error_response, field_of, invalid
from saeserve.server.http.json_api import json_router
from saeserve.server.http.openai_routes import CHAT_PARAMS, COMPLETION_PARAMS, openai_router
from saeserve.server.http.proto_json import json_schema
from saeserve.server.operations import OperationFailed, Operations
from saeserve.server.settings import ServerSettings
from saeserve.server.status import status_for
from saeserve.server.ui.routes import mount_ui
from saeserve.v1 import saeserve_pb2 as pb

_PARAMS_BY_PATH = {"/v1/chat/completions": CHAT_PARAMS, "/v1/completions": COMPLETION_PARAMS}
"""Routes whose errors name OpenAI parameters rather than proto field paths."""


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by its Content-Length before
    anything is read; a body sent without a length is read here up to the limit (the app
    would read all of it anyway) and handed on whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await _too_large(self.max_bytes)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _too_large(self.max_bytes)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": bytes(body), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()  # after the body: wait for a disconnect

        await self.app(scope, replay, send)


def _too_large(max_bytes: int) -> JSONResponse:
    body = error_body(
        f"request body: larger than the limit of {max_bytes} bytes (max_http_body_bytes)",
        type_="invalid_request_error",
        code="request_too_large",
    )
    return JSONResponse(body, status_code=413)


def build_http_app(ops: Operations, settings: ServerSettings) -> FastAPI:
    app = FastAPI(
        title="saeserve",
        summary="Look inside a language model and steer it: SAE features over HTTP.",
        description="An OpenAI-compatible API with steering (`saeserve` body field) and a "
        "JSON API whose bodies are the saeserve.v1 protobuf messages in their JSON mapping. "
        "Send `Authorization: Bearer <key>` when the server has API keys.",
        version="1",
    )
    app.include_router(openai_router(ops))
    app.include_router(json_router(ops))
    mount_ui(app)
    _add_error_handlers(app)
    _add_proto_schemas(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_http_body_bytes)
    return app


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "name", "") or "http"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OperationFailed)
    async def failed(request: Request, exc: OperationFailed) -> JSONResponse:
        return error_response(exc.status, _PARAMS_BY_PATH.get(request.url.path))

    @app.exception_handler(SaeserveError)
    async def rejected(request: Request, exc: SaeserveError) -> JSONResponse:
        """Refused by the HTTP layer before reaching an operation (a body's shape)."""
        status = status_for(exc, rpc=_route_name(request))
        metrics.observe_request(_route_name(request), "http", status.code.name, 0.0)
        return error_response(status, _PARAMS_BY_PATH.get(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def unparsable(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts, param = [], None
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                reason = error.get("ctx", {}).get("error", "")
                parts.append(f"request body: not valid JSON ({reason})")
                continue
            loc = [str(p) for p in error.get("loc", ())[1:]]  # after "body", "query", "path"
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            where = ".".join(loc) or field_of(message) or str(error.get("loc", ("body",))[0])
            param = param or where
            parts.append(message if not loc else f"{where}: {message}")
        metrics.observe_request(_route_name(request), "http", "INVALID_ARGUMENT", 0.0)
        return invalid("; ".join(parts) or "invalid request", param)


def _add_proto_schemas(app: FastAPI) -> None:
    """``/openapi.json`` with the saeserve.v1 messages the JSON routes refer to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for message in pb.DESCRIPTOR.message_types_by_name.values():
                components.update(json_schema(message))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
