"""The JSON API: saeserve.v1's operations over HTTP, in the messages' JSON mapping.

``POST /v1/tokenize``, ``POST /v1/decompose``, ``POST /v1/inspect`` (InspectFeatures),
``POST /v1/contrast`` (ContrastFeatures), ``POST /v1/generate`` (server-sent events,
one GenerateChunk per event), ``GET /v1/saes/{sae}/features/{feature}`` and
``GET /v1/features/search``, ``POST /v1/attribute`` and ``POST /v1/attribute/feature``. Bodies and responses are the proto messages
(``proto_json``); each route is one call to the same ``Operations`` method the gRPC
servicer calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import StreamingResponse
from google.protobuf.message import Message

from saeserve.server.http.proto_json import from_json, ref, to_json
from saeserve.server.http.streaming import event_stream
from saeserve.server.operations import Caller, Operations
from saeserve.v1 import saeserve_pb2 as pb

M = TypeVar("M", bound=Message)

EXAMPLES: dict[str, dict[str, Any]] = {
    "Tokenize": {"model": "demo", "text": "The cat sat on the mat."},
    "Decompose": {"model": "demo", "texts": ["The cat sat on the mat."], "top_k": 5},
    "InspectFeatures": {
        "model": "demo",
        "text": "The cat sat on the mat. The dog sat on the log.",
        "order_by": "ACTIVITY_ORDER_COUNT",
        "top_n": 5,
    },
    "ContrastFeatures": {
        "model": "demo",
        "texts_a": ["The cat sat on the mat.", "A kitten chased the ball."],
        "texts_b": ["The king ruled the land.", "The queen spoke to her court."],
        "unit": "CONTRAST_UNIT_TEXT_MAX",
        "top_n": 5,
    },
    "Generate": {
        "model": "demo",
        "prompt": "Once upon a time",
        "sampling": {"max_new_tokens": 16, "temperature": 0},
        "interventions": [
            {"sae": "resid_post.2", "feature": 1224, "mode": "INTERVENTION_MODE_ADD", "value": 8}
        ],
        "include_baseline": True,
    },
    "Attribute": {
        "model": "demo",
        "prompt": "The cat sat on the",
        "target": {"text": " mat"},
        "top_n": 5,
    },
    "AttributeFeature": {
        "model": "demo",
        "prompt": "The cat sat on the mat.",
        "sae": "resid_post.2",
        "feature": 1224,
        "top_n": 5,
    },
}


RawBody = Annotated[Any, Body(include_in_schema=False)]
"""A JSON body parsed by ``proto_json`` (its schema comes from the proto: ``_body``)."""


def http_caller(request: Request) -> Caller:
    """The caller of an HTTP request: its ``Authorization`` header, if any."""
    header = request.headers.get("authorization")
    return Caller("http", {"authorization": header} if header is not None else None)


def _body(message: type[Message]) -> dict[str, Any]:
    """OpenAPI for a route whose JSON body is ``message``."""
    name = message.DESCRIPTOR.name.removesuffix("Request")
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref(message.DESCRIPTOR),
                    "example": EXAMPLES.get(name, {}),
                }
            },
        }
    }


def _snake(name: str) -> str:
    """``InspectFeatures`` -> ``inspect_features`` (the field path errors start with)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _answers(message: type[Message]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"schema": ref(message.DESCRIPTOR)}}}}


Operation = Callable[[Any, Caller], Awaitable[Message]]


def _posted(request_type: type[Message], operation: Operation, field: str) -> Callable[..., Any]:
    """A route answering ``operation`` for a JSON body of ``request_type``."""

    async def endpoint(request: Request, body: RawBody) -> dict[str, Any]:
        msg = from_json(body, request_type(), field)
        return to_json(await operation(msg, http_caller(request)))

    return endpoint


def json_router(ops: Operations) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["saeserve JSON API"])

    unary: list[tuple[str, str, str, type[Message], type[Message], Operation]] = [
        ("tokenize", "Tokenize", "Tokenize a text: ids, token strings, UTF-8 byte offsets",
         pb.TokenizeRequest, pb.TokenizeResponse, ops.tokenize),
        ("decompose", "Decompose", "Per-token SAE features of one or more texts",
         pb.DecomposeRequest, pb.DecomposeResponse, ops.decompose),
        ("inspect", "InspectFeatures",
         "The features that fire most over a whole text or conversation",
         pb.InspectFeaturesRequest, pb.InspectFeaturesResponse, ops.inspect_features),
        ("contrast", "ContrastFeatures", "The features that best separate two sets of texts",
         pb.ContrastFeaturesRequest, pb.ContrastFeaturesResponse, ops.contrast_features),
        ("attribute", "Attribute",
         "Which SAE features drove the next token's logit (direct and total effects)",
         pb.AttributeRequest, pb.AttributeResponse, ops.attribute),
        ("attribute/feature", "AttributeFeature",
         "Which earlier tokens drove a feature (gradient x input)",
         pb.AttributeFeatureRequest, pb.AttributeFeatureResponse, ops.attribute_feature),
    ]  # fmt: skip
    for path, name, summary, request_type, response_type, operation in unary:
        field = request_type.DESCRIPTOR.name.removesuffix("Request")
        router.add_api_route(
            f"/{path}",
            _posted(request_type, operation, _snake(field)),
            methods=["POST"],
            name=name,
            summary=summary,
            openapi_extra=_body(request_type),
            responses=_answers(response_type),
        )

    @router.post(
        "/generate",
        name="Generate",
        summary="Stream steered (and baseline) tokens as server-sent events",
        description="One `data: <GenerateChunk JSON>` event per token, then `data: [DONE]`. "
        'An error after the first token arrives as one `data: {"error": ...}` event.',
        openapi_extra=_body(pb.GenerateRequest),
        responses={
            200: {"content": {"text/event-stream": {"schema": ref(pb.GenerateChunk.DESCRIPTOR)}}}
        },
        response_class=StreamingResponse,
    )
    async def generate(request: Request, body: RawBody) -> StreamingResponse:
        msg = from_json(body, pb.GenerateRequest(), "generate")
        return await event_stream(_as_json(ops.generate(msg, http_caller(request))))

    @router.get(
        "/saes/{sae:path}/features/{feature}",
        name="GetFeature",
        summary="What a feature fires on and what it promotes",
        responses=_answers(pb.GetFeatureResponse),
    )
    async def get_feature(
        request: Request,
        sae: Annotated[str, Path(description="SAE id (may contain /)", examples=["resid_post.2"])],
        feature: Annotated[int, Path(description="Feature id", ge=0, le=2**31 - 1)],
        model: Annotated[str, Query(description="Model name; empty = the default")] = "",
    ) -> dict[str, Any]:
        msg = pb.GetFeatureRequest(model=model, sae=sae, feature=feature)
        return to_json(await ops.get_feature(msg, http_caller(request)))

    @router.get(
        "/features/search",
        name="SearchFeatures",
        summary="Features whose explanations or top tokens match a query",
        responses=_answers(pb.SearchFeaturesResponse),
    )
    async def search_features(
        request: Request,
        q: Annotated[str, Query(description="Query text", examples=["said"])],
        sae: Annotated[str, Query(description="Only this SAE; empty = all")] = "",
        limit: Annotated[int, Query(description="Results; 0 = 10", ge=0, le=2**31 - 1)] = 0,
        model: Annotated[str, Query(description="Model name; empty = the default")] = "",
    ) -> dict[str, Any]:
        msg = pb.SearchFeaturesRequest(model=model, query=q, sae=sae, limit=limit)
        return to_json(await ops.search_features(msg, http_caller(request)))

    return router


async def _as_json(
    groups: AsyncGenerator[list[pb.GenerateChunk], None],
) -> AsyncGenerator[list[dict[str, Any]], None]:
    async with contextlib.aclosing(groups):
        async for group in groups:
            yield [to_json(chunk) for chunk in group]
