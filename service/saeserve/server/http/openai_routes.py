"""OpenAI-compatible endpoints: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, with steering in the ``saeserve`` body field.

A request becomes one saeserve.v1 GenerateRequest and runs through the same
``Operations.generate`` as gRPC's Generate, so validation, limits and the steering math
are gRPC's; this module only translates shapes. The steered continuation is
``choices[0]``; with ``include_baseline`` the unsteered one is ``saeserve.baseline`` (in a
stream: chunks whose ``choices`` is empty and whose ``saeserve.baseline`` carries the
delta, so clients that read ``choices[0]`` see only the steered text). A variant ended by
one of ``saeserve.stop_conditions`` has the OpenAI ``finish_reason`` "stop", and its choice
(its final chunk's, in a stream) says which condition in a ``saeserve`` object
(``condition_stop``). Errors name the OpenAI parameter (``PARAMS``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from saeserve.errors import InvalidArgument
from saeserve.server.http.errors import ParamNames
from saeserve.server.http.json_api import http_caller
from saeserve.server.http.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    _OpenAIRequest,
)
from saeserve.server.http.proto_json import from_json, to_json
from saeserve.server.http.streaming import event_stream
from saeserve.server.operations import Operations
from saeserve.v1 import saeserve_pb2 as pb

_COMMON_PARAMS = {
    "generate.model": "model",
    "generate.sampling.max_new_tokens": "max_tokens",
    "generate.sampling.temperature": "temperature",
    "generate.sampling.top_p": "top_p",
    "generate.sampling.seed": "seed",
    "generate.sampling.stop": "stop",
    "generate.sampling.top_k": "saeserve.top_k",
    "generate.interventions": "saeserve.interventions",
    "interventions": "saeserve.interventions",  # the engine's checks name fields unprefixed
    "generate.stop_conditions": "saeserve.stop_conditions",
    "stop_conditions": "saeserve.stop_conditions",
}
CHAT_PARAMS: ParamNames = {
    **_COMMON_PARAMS,
    "generate.messages": "messages",
    "prompt": "messages",  # the engine's "prompt: N tokens + max_new_tokens M > context"
    "generate.top_logprobs": "top_logprobs",
}
COMPLETION_PARAMS: ParamNames = {
    **_COMMON_PARAMS,
    "generate.prompt": "prompt",
    "prompt": "prompt",
    "generate.top_logprobs": "logprobs",
}
"""gRPC field paths -> OpenAI parameter names, for errors' ``param``."""

_SHORT_ENUMS = {
    "mode": "INTERVENTION_MODE_",
    "positions": "POSITIONS_",
}
_FINISH = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_EOS: "stop",
    pb.FINISH_REASON_CANCELLED: "stop",
    pb.FINISH_REASON_CONDITION: "stop",  # the detail goes in the choice's ``saeserve``
}


# --- requests ---------------------------------------------------------------------------------
def _intervention(data: dict[str, Any], i: int) -> pb.Intervention:
    """One ``saeserve.interventions`` entry; ``mode``/``positions`` may be short names."""
    data = dict(data)
    for key, prefix in _SHORT_ENUMS.items():
        value = data.get(key)
        if isinstance(value, str) and not value.upper().startswith(prefix):
            data[key] = prefix + value.upper()
    return from_json(data, pb.Intervention(), f"generate.interventions[{i}]")


def generate_request(body: _OpenAIRequest, top_logprobs: int, logprobs: bool) -> pb.GenerateRequest:
    """The GenerateRequest an OpenAI request asks for (without its prompt or messages)."""
    steering = body.saeserve
    msg = pb.GenerateRequest(
        model=body.model,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        include_baseline=bool(steering and steering.include_baseline),
    )
    sampling = msg.sampling
    sampling.max_new_tokens = body.max_tokens or 0
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    if body.seed is not None:
        sampling.seed = body.seed
    sampling.stop.extend(body.stops)
    if steering is not None:
        sampling.top_k = steering.top_k
        sampling.ignore_eos = steering.ignore_eos
        msg.interventions.extend(
            _intervention(iv, i) for i, iv in enumerate(steering.interventions)
        )
        msg.stop_conditions.extend(
            from_json(c, pb.FeatureCondition(), f"generate.stop_conditions[{i}]")
            for i, c in enumerate(steering.stop_conditions)
        )
    return msg


def chat_generate_request(body: ChatCompletionRequest) -> pb.GenerateRequest:
    msg = generate_request(body, body.top_logprobs or 0, body.logprobs)
    if body.max_completion_tokens is not None:
        msg.sampling.max_new_tokens = body.max_completion_tokens
    msg.messages.extend(pb.ChatMessage(role=m.role, content=m.text) for m in body.messages)
    return msg


def completion_generate_request(body: CompletionRequest) -> pb.GenerateRequest:
    msg = generate_request(body, body.logprobs or 0, body.logprobs is not None)
    msg.prompt = body.text
    if not msg.prompt:
        raise InvalidArgument("generate.prompt: must not be empty")
    return msg


# --- responses --------------------------------------------------------------------------------
@dataclass
class _Variant:
    """One continuation as it accumulates: text, logprobs, finish, usage."""

    text: list[str] = field(default_factory=list)
    logprobs: list[pb.GenerateChunk] = field(default_factory=list)
    finish_reason: str | None = None
    condition: dict[str, Any] | None = None
    """``condition_stop`` of its final chunk."""
    usage: pb.Usage | None = None
    chars: int = 0
    """Characters of text so far (streams keep only this, not the text)."""


def _usage(u: pb.Usage | None) -> dict[str, int]:
    prompt, completion = (u.prompt_tokens, u.generated_tokens) if u else (0, 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def condition_stop(chunk: pb.GenerateChunk) -> dict[str, Any] | None:
    """A choice's ``saeserve`` object when a stop condition ended its variant (OpenAI has no
    finish reason for it: the choice's own says "stop")."""
    if chunk.finish_reason != pb.FINISH_REASON_CONDITION:
        return None
    return {
        "finish_reason": "condition",
        "stop_condition": chunk.stop_condition,
        "stop_activation": chunk.stop_activation,
    }


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(chunks: list[pb.GenerateChunk], token: Callable[[int], str]) -> dict[str, Any]:
    """OpenAI chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    content = []
    for c in chunks:
        text = token(c.token_id)
        content.append(
            {
                "token": text,
                "logprob": c.logprob,
                "bytes": _token_bytes(text),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": _token_bytes(t.token)}
                    for t in c.top_logprobs
                ],
            }
        )
    return {"content": content}


def completion_logprobs(
    chunks: list[pb.GenerateChunk], token: Callable[[int], str], offset: int
) -> dict[str, Any]:
    """Legacy completions ``logprobs``: parallel lists, ``text_offset`` from ``offset``."""
    tokens = [token(c.token_id) for c in chunks]
    offsets = []
    for c in chunks:
        offsets.append(offset)
        offset += len(c.text)
    return {
        "tokens": tokens,
        "token_logprobs": [c.logprob for c in chunks],
        "top_logprobs": [{t.token: t.logprob for t in c.top_logprobs} for c in chunks],
        "text_offset": offsets,
    }


class _Completion:
    """Renders one request's chunks as OpenAI objects of one kind (chat or text)."""

    def __init__(
        self, ops: Operations, model: str, *, chat: bool, logprobs: bool, include_usage: bool
    ) -> None:
        self.ops = ops
        self.model = model
        self.chat = chat
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.variants = {pb.VARIANT_STEERED: _Variant(), pb.VARIANT_BASELINE: _Variant()}

    def token(self, token_id: int) -> str:
        return self.ops.token_string(self.model, token_id)

    def _logprobs(self, chunks: list[pb.GenerateChunk], offset: int) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        if self.chat:
            return chat_logprobs(chunks, self.token)
        return completion_logprobs(chunks, self.token, offset)

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    # --- one response ---
    def collect(self, chunk: pb.GenerateChunk) -> None:
        v = self.variants[chunk.variant]
        v.text.append(chunk.text)
        if self.logprobs:
            v.logprobs.append(chunk)
        if chunk.finish_reason:
            v.finish_reason = _FINISH[chunk.finish_reason]
            v.condition = condition_stop(chunk)
            v.usage = chunk.usage

    def _choice(self, v: _Variant) -> dict[str, Any]:
        text = "".join(v.text)
        body: dict[str, Any] = (
            {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        )
        choice = {
            "index": 0,
            **body,
            "logprobs": self._logprobs(v.logprobs, 0),
            "finish_reason": v.finish_reason,
        }
        if v.condition is not None:
            choice["saeserve"] = v.condition
        return choice

    def response(self, include_baseline: bool) -> dict[str, Any]:
        steered = self.variants[pb.VARIANT_STEERED]
        out = self._head(self.object)
        out["choices"] = [self._choice(steered)]
        out["usage"] = _usage(steered.usage)
        if include_baseline:
            baseline = self.variants[pb.VARIANT_BASELINE]
            out["saeserve"] = {
                "baseline": {**self._choice(baseline), "usage": _usage(baseline.usage)}
            }
        return out

    # --- a stream ---
    def stream_events(self, chunk: pb.GenerateChunk) -> list[dict[str, Any]]:
        v = self.variants[chunk.variant]
        first, offset = chunk.index == 0, v.chars
        v.chars += len(chunk.text)
        finish = _FINISH.get(chunk.finish_reason) if chunk.finish_reason else None
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            delta: dict[str, Any] = {"content": chunk.text}
            if first:
                delta["role"] = "assistant"
            choice["delta"] = delta
        else:
            choice["text"] = chunk.text
        choice["logprobs"] = self._logprobs([chunk], offset)
        choice["finish_reason"] = finish
        if (condition := condition_stop(chunk)) is not None:
            choice["saeserve"] = condition
        event = self._head(self.object + (".chunk" if self.chat else ""))
        if chunk.variant == pb.VARIANT_BASELINE:
            if finish and self.include_usage:
                choice["usage"] = _usage(chunk.usage)
            event["choices"] = []
            event["saeserve"] = {"baseline": choice}
            return [event]
        event["choices"] = [choice]
        if not (finish and self.include_usage):
            return [event]
        usage = self._head(event["object"])
        usage["choices"] = []
        usage["usage"] = _usage(chunk.usage)
        return [event, usage]


def openai_router(ops: Operations) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])

    @router.get("/models", name="ListModels", summary="The served models (OpenAI shape)")
    async def list_models(request: Request) -> dict[str, Any]:
        models = await ops.list_models(pb.ListModelsRequest(), http_caller(request))
        return {
            "object": "list",
            "data": [
                {
                    "id": m.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "saeserve",
                    "saeserve": to_json(m),
                }
                for m in models.models
            ],
        }

    async def run(
        request: Request,
        body: _OpenAIRequest,
        msg: pb.GenerateRequest,
        *,
        chat: bool,
        params: ParamNames,
    ) -> dict[str, Any] | StreamingResponse:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        out = _Completion(
            ops, msg.model, chat=chat, logprobs=msg.logprobs, include_usage=include_usage
        )
        groups = ops.generate(msg, http_caller(request))
        if body.stream:
            return await event_stream(_events(groups, out.stream_events), params)
        async with contextlib.aclosing(groups):
            async for group in groups:
                for chunk in group:
                    out.collect(chunk)
        return out.response(msg.include_baseline)

    @router.post(
        "/chat/completions",
        name="ChatCompletions",
        summary="Chat completion (the model's chat template), optionally steered",
        response_model=None,
    )
    async def chat_completions(
        request: Request, body: ChatCompletionRequest
    ) -> dict[str, Any] | StreamingResponse:
        msg = chat_generate_request(body)
        return await run(request, body, msg, chat=True, params=CHAT_PARAMS)

    @router.post(
        "/completions",
        name="Completions",
        summary="Text completion of a prompt, optionally steered",
        response_model=None,
    )
    async def completions(
        request: Request, body: CompletionRequest
    ) -> dict[str, Any] | StreamingResponse:
        msg = completion_generate_request(body)
        return await run(request, body, msg, chat=False, params=COMPLETION_PARAMS)

    return router


async def _events(
    groups: AsyncGenerator[list[pb.GenerateChunk], None],
    render: Callable[[pb.GenerateChunk], list[dict[str, Any]]],
) -> AsyncGenerator[list[dict[str, Any]], None]:
    async with contextlib.aclosing(groups):
        async for group in groups:
            yield [event for chunk in group for event in render(chunk)]
