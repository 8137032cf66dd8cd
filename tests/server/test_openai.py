"""The OpenAI-compatible API through the real ``openai`` package, against a live server.

Every answer is checked against gRPC Generate for the same request (the same operation
underneath), streamed text against the non-streamed text, and each error class against
the exception the SDK raises for it, with the parameter named.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, KEY, LIMITS, Server

STEER = {"sae": "post0", "feature": 5, "mode": "add", "value": 40.0}
GRPC_STEER = pb.Intervention(mode=pb.INTERVENTION_MODE_ADD, sae="post0", feature=5, value=40.0)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=KEY, max_retries=0) as c:
        yield c


def grpc_texts(server: Server, request: pb.GenerateRequest) -> dict[int, str]:
    """Each variant's text from gRPC Generate."""
    out: dict[int, str] = {}
    for chunk in server.stub.Generate(request, metadata=AUTH):
        out[chunk.variant] = out.get(chunk.variant, "") + chunk.text
    return out


def test_models_lists_each_model_with_its_saes(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny", "demo"}
    extra: Any = models["tiny"].model_extra
    assert [s["id"] for s in extra["saeserve"]["saes"]] == ["post0", "post1"]


def test_completion_equals_grpc_generate_and_its_stream(
    server: Server, client: openai.OpenAI
) -> None:
    args: dict[str, Any] = {
        "model": "tiny",
        "prompt": "The cat sat",
        "max_tokens": 8,
        "temperature": 0.9,
        "seed": 7,
    }
    done = client.completions.create(**args)
    sampling = pb.SamplingParams(max_new_tokens=8, temperature=0.9, seed=7)
    want = grpc_texts(
        server, pb.GenerateRequest(model="tiny", prompt="The cat sat", sampling=sampling)
    )
    assert done.choices[0].text == want[pb.VARIANT_STEERED]
    assert done.usage is not None and done.usage.prompt_tokens > 0
    stream = client.completions.create(**args, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-1].usage == done.usage
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == done.choices[
        0
    ].finish_reason


def test_chat_completion_uses_the_template_and_streams_the_same_text(
    server: Server, client: openai.OpenAI
) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    done = client.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=6, temperature=0
    )
    request = pb.GenerateRequest(
        model="tiny",
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        sampling=pb.SamplingParams(max_new_tokens=6, temperature=0),
    )
    assert done.choices[0].message.content == grpc_texts(server, request)[pb.VARIANT_STEERED]
    assert done.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0, stream=True
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == done.choices[0].message.content


def test_steering_through_extra_body_equals_grpc(server: Server, client: openai.OpenAI) -> None:
    plain = client.completions.create(
        model="tiny", prompt="The cat sat", max_tokens=8, temperature=0
    )
    steered = client.completions.create(
        model="tiny",
        prompt="The cat sat",
        max_tokens=8,
        temperature=0,
        extra_body={"saeserve": {"interventions": [STEER], "include_baseline": True}},
    )
    request = pb.GenerateRequest(
        model="tiny",
        prompt="The cat sat",
        sampling=pb.SamplingParams(max_new_tokens=8, temperature=0),
        interventions=[GRPC_STEER],
        include_baseline=True,
    )
    want = grpc_texts(server, request)
    assert steered.choices[0].text == want[pb.VARIANT_STEERED] != plain.choices[0].text
    extra: Any = steered.model_extra
    assert (
        extra["saeserve"]["baseline"]["text"] == want[pb.VARIANT_BASELINE] == plain.choices[0].text
    )
    stream = client.completions.create(
        model="tiny",
        prompt="The cat sat",
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body={"saeserve": {"interventions": [STEER], "include_baseline": True}},
    )
    steered_text, baseline_text = "", ""
    for chunk in stream:
        if chunk.choices:
            steered_text += chunk.choices[0].text
        else:
            baseline_text += (chunk.model_extra or {})["saeserve"]["baseline"]["text"]
    assert (steered_text, baseline_text) == (want[pb.VARIANT_STEERED], want[pb.VARIANT_BASELINE])


def test_logprobs_and_top_logprobs_equal_grpc(server: Server, client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    request = pb.GenerateRequest(
        model="tiny",
        messages=[pb.ChatMessage(role="user", content="Hi")],
        sampling=pb.SamplingParams(max_new_tokens=4, temperature=0),
        logprobs=True,
        top_logprobs=3,
    )
    chunks = list(server.stub.Generate(request, metadata=AUTH))
    assert done.choices[0].logprobs is not None
    content = done.choices[0].logprobs.content or []
    assert len(content) == len(chunks)
    for got, want in zip(content, chunks, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-5)
        assert [t.token for t in got.top_logprobs] == [t.token for t in want.top_logprobs]
        assert [t.logprob for t in got.top_logprobs] == pytest.approx(
            [t.logprob for t in want.top_logprobs], abs=1e-5
        )
        assert got.bytes == list(got.token.encode())
    legacy = client.completions.create(
        model="tiny", prompt="Hi", max_tokens=3, temperature=0, logprobs=2
    )
    assert legacy.choices[0].logprobs is not None
    assert [len(t or {}) for t in legacy.choices[0].logprobs.top_logprobs or []] == [2, 2, 2]


def test_every_error_class_raises_the_sdks_exception_naming_the_field(
    server: Server, client: openai.OpenAI
) -> None:
    def raised(error: type[openai.APIStatusError], **kwargs: Any) -> openai.APIStatusError:
        with pytest.raises(error) as info:
            client.completions.create(**{"model": "tiny", "prompt": "Hi", **kwargs})
        return info.value

    def param(e: openai.APIStatusError) -> str:
        body: Any = e.body
        return str(body["param"])

    e = raised(openai.BadRequestError, max_tokens=LIMITS.max_new_tokens + 1)
    assert param(e) == "max_tokens" and str(LIMITS.max_new_tokens) in e.message
    assert param(raised(openai.BadRequestError, n=2)) == "n"
    assert param(raised(openai.BadRequestError, presence_penalty=0.5)) == "presence_penalty"
    assert param(raised(openai.BadRequestError, temperature=-1)) == "temperature"
    assert param(raised(openai.BadRequestError, extra_body={"foo": 1})) == "foo"
    bad = {"saeserve": {"interventions": [{**STEER, "feature": 10_000}]}}
    e = raised(openai.BadRequestError, extra_body=bad)
    assert param(e) == "saeserve.interventions[0].feature"
    bad = {"saeserve": {"interventions": [{**STEER, "mode": "boost"}]}}
    assert param(raised(openai.BadRequestError, extra_body=bad)).startswith(
        "saeserve.interventions[0]"
    )
    assert param(raised(openai.NotFoundError, model="gpt-4")) == "model"
    with pytest.raises(openai.BadRequestError, match="no chat template") as chat:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}])
    assert param(chat.value) == "messages"
    wrong_key = client.with_options(api_key="not-the-key")
    with pytest.raises(openai.AuthenticationError):
        wrong_key.completions.create(model="tiny", prompt="Hi")
    with pytest.raises(openai.APIStatusError) as big:
        client.completions.create(model="tiny", prompt="a" * server.settings.max_http_body_bytes)
    assert big.value.status_code == 413
