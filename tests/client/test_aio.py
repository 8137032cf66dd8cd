"""The asyncio client against the fake server: the same contract as the sync client.

Each test runs its own event loop with ``asyncio.run`` (no pytest plugin needed) and
opens the client inside it, as ``grpc.aio`` requires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np
import pytest

from saeserve_client import (
    NO_RETRY,
    AsyncSaeserveClient,
    GenerateChunk,
    SaeserveError,
    Steer,
    collect,
)
from tests.client.conftest import FAST_RETRY
from tests.client.fake_server import FakeSaeserve, FakeServer

T = TypeVar("T")


def run(
    server: FakeServer, body: Callable[[AsyncSaeserveClient], Awaitable[T]], api_key: str = ""
) -> T:
    async def main() -> T:
        async with AsyncSaeserveClient(
            server.address, api_key=api_key or None, retry=FAST_RETRY, timeout=10.0
        ) as client:
            return await body(client)

    return asyncio.run(main())


def test_list_models_and_tokenize(server: FakeServer) -> None:
    async def body(client: AsyncSaeserveClient) -> None:
        [model] = await client.list_models()
        assert [s.architecture for s in model.saes] == ["topk", "jumprelu"]
        tokens = await client.tokenize("a bb")
        assert tokens.strings == ["<bos>", "a", " bb"]
        assert tokens.offsets.tolist() == [[0, 0], [0, 1], [1, 4]]

    run(server, body)


def test_decompose_shapes(server: FakeServer) -> None:
    async def body(client: AsyncSaeserveClient) -> None:
        [one, two] = await client.decompose(["p q", "r"], top_k=5, feature_ids=[9])
        part = one["resid_post.0"]
        assert part.top_ids.shape == (3, 5) and part.top_values.shape == (3, 5)
        assert part.top_ids[2].tolist() == [10, 11, 12, 13, 14]
        assert part.dense[:, 0].tolist() == pytest.approx([0.09, 1.09, 2.09])
        assert two["mlp_out.1"].top_ids.shape == (2, 5)

    run(server, body)


def test_generate_feature_search_health(server: FakeServer, fake: FakeSaeserve) -> None:
    async def body(client: AsyncSaeserveClient) -> None:
        chunks: list[GenerateChunk] = []
        async with client.generate(
            "x",
            max_new_tokens=2,
            include_baseline=True,
            interventions=[Steer.clamp("resid_post.0", 1, 4.0)],
            track=[("resid_post.0", 1)],
        ) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        assert [c.variant for c in chunks] == ["steered", "baseline"] * 2
        assert chunks[-1].finish_reason == "length" and chunks[0].logprob is None
        assert collect(chunks)["baseline"].text == " b0 b1"
        assert isinstance(chunks[1].tracked, np.ndarray) and chunks[1].tracked.tolist() == [0.0]
        feature = await client.get_feature("resid_post.0", 7)
        assert feature.explanation is not None and feature.explanation.source == "generated"
        assert [m.feature for m in await client.search_features("cat")] == [7, 3]
        assert await client.health() == "SERVING"

    run(server, body)
    assert fake.requests["Generate"].interventions[0].value == 4.0


def test_cancelling_generate_stops_the_server(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.chunk_delay = 0.05

    async def body(client: AsyncSaeserveClient) -> None:
        async with client.generate("go", max_new_tokens=200) as stream:
            async for chunk in stream:
                if chunk.index == 1:
                    break
        assert await asyncio.to_thread(fake.generate_ended.wait, 3.0)

    run(server, body)
    assert fake.generate_sent < 20


def test_retry_and_no_retry(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.failures["ListModels"] = [grpc.StatusCode.UNAVAILABLE] * 2
    fake.failures["Tokenize"] = [grpc.StatusCode.INVALID_ARGUMENT]
    fake.failures["Generate"] = [grpc.StatusCode.UNAVAILABLE]

    async def body(client: AsyncSaeserveClient) -> None:
        assert (await client.list_models())[0].name == "demo"
        with pytest.raises(SaeserveError) as caught:
            await client.tokenize("a")
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert [c.text async for c in client.generate("a", max_new_tokens=1)] == [" s0"]

    run(server, body)
    assert (fake.calls["ListModels"], fake.calls["Tokenize"], fake.calls["Generate"]) == (3, 1, 2)


def test_generate_is_not_retried_after_its_first_chunk_nor_with_no_retry(
    server: FakeServer, fake: FakeSaeserve
) -> None:
    fake.generate_failures_after_first_chunk = [grpc.StatusCode.UNAVAILABLE]
    fake.failures["ListModels"] = [grpc.StatusCode.UNAVAILABLE]
    received: list[str] = []

    async def body(client: AsyncSaeserveClient) -> None:
        with pytest.raises(SaeserveError) as mid_stream:
            async for chunk in client.generate("a", max_new_tokens=3):
                received.append(chunk.text)
        assert mid_stream.value.code_name == "UNAVAILABLE"
        async with AsyncSaeserveClient(server.address, retry=NO_RETRY) as once:
            with pytest.raises(SaeserveError) as unary:
                await once.list_models()
        assert unary.value.code_name == "UNAVAILABLE"

    run(server, body)
    assert received == [" s0"]
    assert (fake.calls["Generate"], fake.calls["ListModels"]) == (1, 1)


def test_deadline_auth_and_errors(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.delays["SearchFeatures"] = 5.0
    fake.required_key = "k1"

    async def body(client: AsyncSaeserveClient) -> None:
        began = time.monotonic()
        with pytest.raises(SaeserveError) as slow:
            await client.search_features("cat", timeout=0.3)
        assert slow.value.code_name == "DEADLINE_EXCEEDED" and time.monotonic() - began < 1.5
        with pytest.raises(SaeserveError) as bad:
            await client.decompose("x", top_k=900)
        assert bad.value.message == "decompose.top_k: 900 > limit 256"

    run(server, body, api_key="k1")
    assert fake.metadata["Decompose"]["authorization"] == "Bearer k1"
    assert fake.calls["SearchFeatures"] == 1
