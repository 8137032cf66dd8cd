"""The OpenAI API's request shapes that saeserve accepts, as pydantic models.

What the OpenAI API has and saeserve does not do is refused, naming the parameter
(``n`` above 1, penalties, tools, ...), never ignored: a parameter is accepted only when
it is declared here, or when it is one of ``NEUTRAL``'s and has its no-op value.
Steering travels in one extra field, ``saeserve`` (``extra_body={"saeserve": {...}}``
from the openai SDK), with the same intervention fields and limits as gRPC's Generate.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saeserve.errors import InvalidArgument
from saeserve.server.http.proto_json import json_schema
from saeserve.v1 import saeserve_pb2 as pb

NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "suffix": ("",),
    "parallel_tool_calls": (False,),
    "tools": ([],),
}
"""OpenAI parameters saeserve does not implement, with the values that mean "off"; null
is "off" for every parameter."""

_INTERVENTION_SCHEMA = json_schema(pb.Intervention.DESCRIPTOR)
_CONDITION_SCHEMA = json_schema(pb.FeatureCondition.DESCRIPTOR)
_MODES = "add, clamp, scale, ablate, vector, clamp_threshold (or INTERVENTION_MODE_ADD, ...)"


class SteeringOptions(BaseModel):
    """The ``saeserve`` body field: steering and saeserve's own generation options."""

    model_config = ConfigDict(extra="forbid")

    interventions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="saeserve.v1.Intervention objects (same fields and limits as gRPC); "
        f"`mode` is one of {_MODES}; `positions` one of all, prompt, generated, indices.",
        json_schema_extra={"items": _INTERVENTION_SCHEMA["saeserve.v1.Intervention"]},
        examples=[[{"sae": "resid_post.2", "feature": 1224, "mode": "add", "value": 8}]],
    )
    stop_conditions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="saeserve.v1.FeatureCondition objects (same fields and limits as gRPC's "
        "GenerateRequest.stop_conditions): a variant stops at the first step where one holds; "
        'its `finish_reason` is then "stop" and its choice carries `saeserve: {"finish_reason": '
        '"condition", "stop_condition": <index>, "stop_activation": <value>}`.',
        json_schema_extra={"items": _CONDITION_SCHEMA["saeserve.v1.FeatureCondition"]},
        examples=[[{"sae": "resid_post.2", "feature": 1224, "threshold": 5}]],
    )
    include_baseline: bool = Field(
        default=False,
        description="Also generate without the interventions (same sampling and seed); "
        "returned in the response's `saeserve.baseline` (streamed as chunks with empty "
        "`choices` and a `saeserve.baseline` delta).",
    )
    ignore_eos: bool = Field(
        default=False, description="Keep generating past end-of-sequence tokens."
    )
    top_k: int = Field(default=0, ge=0, description="Sample from the top_k tokens; 0 = no cut.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


_REFUSES_OTHERS: dict[str, Any] = {"additionalProperties": False}
"""Unknown fields are refused (``NEUTRAL`` aside), so the published schema says so."""


class _OpenAIRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_REFUSES_OTHERS)

    model: str = Field(description="A served model's name (GET /v1/models).")
    max_tokens: int | None = Field(default=None, ge=1, description="Tokens to generate.")
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    saeserve: SteeringOptions | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _OpenAIRequest:
        for name, value in (self.model_extra or {}).items():
            if value is None:
                continue
            if name not in NEUTRAL:
                raise InvalidArgument(f"{name}: not supported by saeserve")
            if value not in NEUTRAL[name]:
                raise InvalidArgument(
                    f"{name}: only {NEUTRAL[name][0]!r} is supported by saeserve, got {value!r}"
                )
        if self.stream_options is not None and not self.stream:
            raise InvalidArgument("stream_options: only allowed with stream: true")
        return self

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(examples=["user"])
    content: str | list[TextPart] = Field(description="Text, or a list of text parts.")
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_OpenAIRequest):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            **_REFUSES_OTHERS,
            "examples": [
                {
                    "model": "demo",
                    "messages": [{"role": "user", "content": "Tell me about the sea."}],
                    "max_tokens": 16,
                    "saeserve": {
                        "interventions": [
                            {"sae": "resid_post.2", "feature": 1224, "mode": "add", "value": 8}
                        ]
                    },
                }
            ],
        },
    )

    @model_validator(mode="after")
    def _one_length(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise InvalidArgument("max_completion_tokens: differs from max_tokens; send one")
        if self.top_logprobs and not self.logprobs:
            raise InvalidArgument("top_logprobs: needs logprobs to be true")
        if any(m.name for m in self.messages):
            raise InvalidArgument("messages[].name: not supported by saeserve")
        return self


class CompletionRequest(_OpenAIRequest):
    """POST /v1/completions."""

    prompt: str | list[str] = Field(description="The prompt: a string (or a list of one).")
    logprobs: int | None = Field(
        default=None, ge=0, description="Report logprobs with this many alternatives."
    )

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            **_REFUSES_OTHERS,
            "examples": [
                {
                    "model": "demo",
                    "prompt": "Once upon a time",
                    "max_tokens": 16,
                    "temperature": 0,
                    "saeserve": {
                        "interventions": [
                            {"sae": "resid_post.2", "feature": 1224, "mode": "add", "value": 8}
                        ],
                        "include_baseline": True,
                    },
                }
            ],
        },
    )

    @property
    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InvalidArgument(
                f"prompt: {len(self.prompt)} prompts given; saeserve takes one per request"
            )
        return self.prompt[0]
