"""Continuous batching of unary requests in the ingress: one replica call per batch.

Callers ``submit`` one request each. A request that finds a free slot (fewer than
``max_in_flight`` replica calls running) leaves at once, with whatever else is queued;
requests that arrive while every slot is busy queue up and leave together as the next
batch, up to ``max_batch_size`` requests. So a lone request never waits for company, and
under load the batch grows to what arrived during one forward pass. ``wait_s`` > 0 lets a
batch that is not full wait for company until its oldest request has waited that long.

``send`` receives the batch and returns one outcome per request, in order: a result, or
the exception for that request alone (a batch with one bad request still answers the
others). An exception raised by ``send`` itself fails the whole batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Generic, TypeVar

from saeserve.errors import ResourceExhausted

Req = TypeVar("Req")
Res = TypeVar("Res")

Send = Callable[[list[Req]], Awaitable[list[Res | BaseException]]]


@dataclass
class _Pending(Generic[Req, Res]):
    request: Req
    future: asyncio.Future[Res] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    since: float = field(default_factory=lambda: asyncio.get_running_loop().time())


@dataclass(eq=False)
class Batcher(Generic[Req, Res]):
    """``on_queue``: requests queued, when it changes; ``on_sent``: seconds a request
    waited before its batch left."""

    send: Send[Req, Res]
    _: KW_ONLY
    max_batch_size: int
    max_in_flight: int
    max_queue_length: int
    wait_s: float = 0.0
    on_queue: Callable[[int], None] | None = None
    on_sent: Callable[[float], None] | None = None
    _queue: deque[_Pending[Req, Res]] = field(default_factory=deque, init=False)
    _in_flight: int = field(default=0, init=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, request: Req) -> Res:
        """The outcome of `request`, sent in some batch; ResourceExhausted if the queue is full."""
        if len(self._queue) >= self.max_queue_length:
            raise ResourceExhausted(
                f"the request queue is full ({self.max_queue_length} requests waiting)"
            )
        pending: _Pending[Req, Res] = _Pending(request)
        self._queue.append(pending)
        self._dispatch()
        if self.on_queue:
            self.on_queue(len(self._queue))
        try:
            return await pending.future
        finally:
            if not pending.future.done():  # the caller went away while it still waited
                pending.future.cancel()

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._in_flight < self.max_in_flight:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if len(self._queue) < self.max_batch_size and self.wait_s > 0:
                left = self._queue[0].since + self.wait_s - loop.time()
                if left > 0:
                    self._timer = loop.call_later(left, self._dispatch)
                    return
            n = min(self.max_batch_size, len(self._queue))
            batch = [p for p in (self._queue.popleft() for _ in range(n)) if not p.future.done()]
            if self.on_queue:
                self.on_queue(len(self._queue))
            if self.on_sent:
                for p in batch:
                    self.on_sent(loop.time() - p.since)
            if not batch:  # every caller in it gave up
                continue
            self._in_flight += 1
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending[Req, Res]]) -> None:
        try:
            outcomes = await self.send([p.request for p in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(outcomes)} outcomes")
            for p, outcome in zip(batch, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)
        except asyncio.CancelledError:
            for p in batch:
                p.future.cancel()
            raise
        except Exception as e:  # the call itself failed: every caller in it hears why
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
        finally:
            self._in_flight -= 1
            self._dispatch()
