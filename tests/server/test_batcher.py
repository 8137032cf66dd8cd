"""The ingress's continuous batcher, driven by a fake replica whose calls we hold and release."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from saeserve.errors import InvalidArgument, ResourceExhausted
from saeserve.server.batcher import Batcher


class FakeReplica:
    """Records each batch it is sent; a call returns only when the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.fail_with: Exception | None = None

    async def send(self, reqs: list[int]) -> list[int | BaseException]:
        self.batches.append(list(reqs))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [InvalidArgument(f"text {r}: bad") if r < 0 else 10 * r for r in reqs]

    def release(self, i: int) -> None:
        self.gates[i].set()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop."""

    @functools.wraps(test)
    def wrapper() -> None:
        asyncio.run(test())

    return wrapper


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def make(replica: FakeReplica, **kw: object) -> Batcher[int, int]:
    opts: dict = {"max_batch_size": 4, "max_in_flight": 1, "max_queue_length": 100, **kw}
    return Batcher(replica.send, **opts)


@run
async def test_a_lone_request_goes_at_once_and_gets_its_answer() -> None:
    replica = FakeReplica()
    batcher = make(replica)
    task = asyncio.create_task(batcher.submit(3))
    await settle()
    assert replica.batches == [[3]]  # no waiting for company
    replica.release(0)
    assert await task == 30


@run
async def test_requests_arriving_during_a_call_leave_together_next() -> None:
    replica = FakeReplica()
    batcher = make(replica)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    rest = [asyncio.create_task(batcher.submit(r)) for r in (2, 3, 4, 5, 6)]
    await settle()
    assert replica.batches == [[1]]  # one call in flight at most
    assert batcher.queued == 5
    replica.release(0)
    await settle()
    assert replica.batches == [[1], [2, 3, 4, 5]]  # capped at max_batch_size
    replica.release(1)
    await settle()
    assert replica.batches == [[1], [2, 3, 4, 5], [6]]
    replica.release(2)
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40, 50, 60]


@run
async def test_each_free_slot_sends_at_once() -> None:
    replica = FakeReplica()
    batcher = make(replica, max_in_flight=2)
    tasks = [asyncio.create_task(batcher.submit(r)) for r in range(1, 5)]
    await settle()
    assert replica.batches == [[1], [2]]  # two slots; 3 and 4 wait for one
    replica.release(1)
    await settle()
    assert replica.batches == [[1], [2], [3, 4]]
    for i in (0, 2):
        replica.release(i)
    assert [await t for t in tasks] == [10, 20, 30, 40]


@run
async def test_a_bad_request_fails_alone() -> None:
    replica = FakeReplica()
    batcher = make(replica)
    blocker = asyncio.create_task(batcher.submit(0))
    await settle()
    good, bad = asyncio.create_task(batcher.submit(7)), asyncio.create_task(batcher.submit(-1))
    await settle()
    replica.release(0)
    await settle()
    replica.release(1)
    assert await good == 70
    with pytest.raises(InvalidArgument, match="text -1: bad"):
        await bad
    assert await blocker == 0


@run
async def test_a_failed_call_fails_every_request_in_it() -> None:
    replica = FakeReplica()
    replica.fail_with = ConnectionError("replica died")
    batcher = make(replica)
    tasks = [asyncio.create_task(batcher.submit(r)) for r in (1, 2)]
    await settle()
    replica.release(0)
    await settle()
    replica.release(1)
    for t in tasks:
        with pytest.raises(ConnectionError, match="replica died"):
            await t


@run
async def test_a_full_queue_rejects_with_resource_exhausted() -> None:
    replica = FakeReplica()
    batcher = make(replica, max_queue_length=2)
    running = asyncio.create_task(batcher.submit(1))
    await settle()
    queued = [asyncio.create_task(batcher.submit(r)) for r in (2, 3)]
    await settle()
    with pytest.raises(ResourceExhausted, match=r"queue is full \(2 requests"):
        await batcher.submit(4)
    replica.release(0)
    await settle()
    replica.release(1)
    assert await running == 10
    assert [await t for t in queued] == [20, 30]


@run
async def test_a_caller_that_gives_up_is_not_sent() -> None:
    replica = FakeReplica()
    batcher = make(replica)
    running = asyncio.create_task(batcher.submit(1))
    await settle()
    gone = asyncio.create_task(batcher.submit(2))
    stays = asyncio.create_task(batcher.submit(3))
    await settle()
    gone.cancel()
    await settle()
    replica.release(0)
    await settle()
    assert replica.batches == [[1], [3]]
    replica.release(1)
    assert (await running, await stays) == (10, 30)


@run
async def test_wait_s_holds_a_partial_batch_for_company() -> None:
    replica = FakeReplica()
    batcher = make(replica, wait_s=0.05)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    assert replica.batches == []  # waiting for company
    second = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.1)
    assert replica.batches == [[1, 2]]
    replica.release(0)
    assert (await first, await second) == (10, 20)


@run
async def test_wait_s_ends_as_soon_as_the_batch_is_full() -> None:
    replica = FakeReplica()
    batcher = make(replica, wait_s=30.0, max_batch_size=2)
    tasks = [asyncio.create_task(batcher.submit(r)) for r in (1, 2)]
    await settle()
    assert replica.batches == [[1, 2]]
    replica.release(0)
    assert [await t for t in tasks] == [10, 20]
