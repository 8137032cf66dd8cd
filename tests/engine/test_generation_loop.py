"""The replica's generation thread: streams get the engine's events, grouped by interval."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from saeserve.engine.generate import BatchGenerator, generate
from saeserve.engine.generation_loop import GenerationLoop, group_interval
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import GenerateRequest, SamplingParams, TokenEvent
from saeserve.errors import InvalidArgument, ResourceExhausted
from saeserve.model.tiny import build_tiny_model

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    path: Path = build_tiny_model("gpt2", tmp_path_factory.mktemp("loop"), n_layers=2, d_model=32)
    return ServedModel.load(path)


def request(served: ServedModel) -> GenerateRequest:
    ids = served.lm.tokenizer("Once upon a time")["input_ids"]
    sampling = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    return GenerateRequest(ids, sampling, include_baseline=True)


def stream_groups(served: ServedModel, interval_s: float) -> list[list[TokenEvent]]:
    loop = GenerationLoop(BatchGenerator(served), threading.Lock(), interval_s=interval_s)

    async def collect() -> list[list[TokenEvent]]:
        return [g async for g in loop.stream(request(served))]

    async def main() -> list[list[TokenEvent]]:
        # a stream that held its last event for the interval would miss this deadline
        return await asyncio.wait_for(collect(), timeout=20.0)

    return asyncio.run(main())


def key(e: TokenEvent) -> tuple[object, ...]:
    return (e.variant, e.token_id, e.text, e.finish_reason)


@pytest.mark.parametrize("interval_s", [0.0, 0.05])
def test_a_stream_carries_the_engines_events_in_order(
    served: ServedModel, interval_s: float
) -> None:
    want = [key(e) for e in generate(served, request(served))]
    groups = stream_groups(served, interval_s)
    assert [key(e) for g in groups for e in g] == want
    assert len(want) == 2 * NEW_TOKENS


def test_an_interval_groups_events_but_never_holds_the_first_or_last(
    served: ServedModel,
) -> None:
    groups = stream_groups(served, 30.0)  # far longer than the whole generation
    # what is ready at first leaves at once, the rest waits for the window, and a
    # variant's last event sends what waited without delay: a few groups, and well
    # within stream_groups' deadline (holding the first or the last would miss it)
    assert len(groups) <= 3
    assert groups[-1][-1].finish_reason is not None


def test_the_group_interval_grows_with_the_streams_open_up_to_its_maximum() -> None:
    assert group_interval(1, 0.02, 0.1) == 0.02
    assert group_interval(3, 0.02, 0.1) == pytest.approx(0.06)
    assert group_interval(8, 0.02, 0.1) == 0.1
    assert group_interval(8, 0.0, 0.1) == 0.0  # 0: every step at once, at any load
    assert group_interval(4, 0.05, 0.01) == 0.05  # a maximum below the interval


def _run_streams(
    loop: GenerationLoop, lock: threading.Lock, requests: list[GenerateRequest]
) -> list[list[TokenEvent] | BaseException]:
    """Every request's events (or its error), all streams opened while ``lock`` (the
    loop's model lock) keeps the first admitted request from taking a step."""

    async def one(req: GenerateRequest) -> list[TokenEvent] | BaseException:
        try:
            return [e async for g in loop.stream(req) for e in g]
        except Exception as e:
            return e

    async def main() -> list[list[TokenEvent] | BaseException]:
        lock.acquire()
        streams = asyncio.gather(*(one(r) for r in requests))
        await asyncio.sleep(0.2)  # every stream has left its request in the inbox
        lock.release()
        return await asyncio.wait_for(streams, 60.0)

    return asyncio.run(main())


def test_a_burst_over_the_batch_waits_its_turn_and_gets_every_token(served: ServedModel) -> None:
    """Batch of 2 rows, 5 baseline requests (2 rows each): they run one at a time, each
    with the tokens it would have alone; waits are reported."""
    waits: list[float] = []
    waiting: list[int] = []
    lock = threading.Lock()
    loop = GenerationLoop(
        BatchGenerator(served, max_batch_size=2),
        lock,
        max_waiting=8,
        max_wait_s=60.0,
        on_admitted=waits.append,
        on_waiting=waiting.append,
    )
    want = [key(e) for e in generate(served, request(served))]
    results = _run_streams(loop, lock, [request(served) for _ in range(5)])
    for events in results:
        assert not isinstance(events, BaseException), events
        assert [key(e) for e in events] == want
    assert len(waits) == 5 and max(waiting) >= 1


def test_beyond_the_waiting_room_or_the_wait_a_request_is_refused(served: ServedModel) -> None:
    lock = threading.Lock()
    loop = GenerationLoop(
        BatchGenerator(served, max_batch_size=2), lock, max_waiting=1, max_wait_s=60.0
    )
    bad = request(served)
    bad.sampling = SamplingParams(max_new_tokens=10_000)
    results = _run_streams(loop, lock, [request(served), request(served), request(served), bad])
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(refused) == 1 and "1 requests waiting" in str(refused[0])
    assert isinstance(results[3], InvalidArgument)  # validated before it could wait
    assert sum(isinstance(r, list) for r in results) == 2

    impatient = GenerationLoop(
        BatchGenerator(served, max_batch_size=2), lock, max_waiting=4, max_wait_s=0.0
    )
    results = _run_streams(impatient, lock, [request(served), request(served)])
    assert isinstance(results[0], list)
    assert isinstance(results[1], ResourceExhausted) and "waited 0 s" in str(results[1])
