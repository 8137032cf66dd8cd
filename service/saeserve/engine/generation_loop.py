"""A background thread that steps the engine's BatchGenerator for every open Generate stream.

Streams (asyncio, on the replica's event loop) leave their requests and cancels in an
inbox and read their events from an asyncio queue. Only the thread touches the generator:
before each step it admits what the inbox holds, then runs one decode step for all running
sequences, outside the inbox's lock, so concurrent streams share forward passes, a new
stream joins at the next step, and neither a submit nor a cancel ever waits for a step.
The thread also groups each stream's events: it keeps them in the stream's buffer and
hands the buffer over (one call into the event loop per step, for every stream due) when the
interval has passed since the stream's last hand-over, or at once for a stream's first
events, a variant's last event or an error. So a stream wakes, and sends a message, once
per interval rather than once per step. The interval grows with the streams open
(``group_interval``), so the hand-overs a second, and the CPU they take from the steps in
this process, stay about the same however many streams share the thread. A stream that
is closed (client cancelled, deadline passed) cancels its sequences, which leave the
batch before the next step.

A request that finds the batch full (its rows, or the memory budget
``limits.generate_memory_bytes``: ``BatchGenerator.fits``) waits, in arrival order, for
rows to free up: at most
``max_waiting`` requests and ``max_wait_s`` seconds each, after which it is refused
(RESOURCE_EXHAUSTED), so a burst is served rather than refused while a flood is still
bounded. A request is validated before it waits, so a bad one is refused at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from saeserve.engine.generate import BatchGenerator, PreparedRequest
from saeserve.engine.generation_memory import MIB
from saeserve.engine.types import GenerateRequest, TokenEvent
from saeserve.errors import ResourceExhausted

log = logging.getLogger(__name__)

Group = list[TokenEvent] | BaseException
GroupQueue = asyncio.Queue[Group]


@dataclass
class _Sink:
    """Where one request's events go, and those waiting to go there."""

    loop: asyncio.AbstractEventLoop
    queue: GroupQueue
    buffer: list[TokenEvent] = field(default_factory=list)
    request_id: int | None = None
    """The generator's id for the request, once the thread has admitted it."""
    handed_at: float | None = None
    """time.monotonic() of the last hand-over; None before the first."""

    def fail(self, error: BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, error)

    def due(self, now: float, interval_s: float) -> bool:
        if self.handed_at is None or any(ev.finish_reason is not None for ev in self.buffer):
            return True
        return now - self.handed_at >= interval_s


@dataclass
class _Waiting:
    """A prepared request waiting for room in the batch."""

    prepared: PreparedRequest
    sink: _Sink
    since: float


def group_interval(n_streams: int, interval_s: float, max_interval_s: float) -> float:
    """How long a stream's events may wait for their group with ``n_streams`` open:
    ``interval_s`` each, so about 1/interval_s hand-overs a second in all, but never more
    than ``max_interval_s`` (nor less than ``interval_s``)."""
    return max(interval_s, min(interval_s * n_streams, max_interval_s))


def _deliver(items: list[tuple[GroupQueue, Group]]) -> None:
    for queue, group in items:
        queue.put_nowait(group)


class GenerationLoop:
    def __init__(
        self,
        generator: BatchGenerator,
        model_lock: threading.Lock,
        *,
        interval_s: float = 0.0,
        max_interval_s: float = 0.0,
        max_waiting: int = 0,
        max_wait_s: float = 0.0,
        on_step: Callable[[list[TokenEvent]], None] | None = None,
        on_active: Callable[[int], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
        on_waiting: Callable[[int], None] | None = None,
        on_admitted: Callable[[float], None] | None = None,
    ) -> None:
        """``on_active``/``on_waiting``: sequences running / requests waiting, when they
        change; ``on_admitted``: seconds a request waited for room."""
        self.generator = generator
        self.model_lock = model_lock
        self.interval_s = interval_s
        self.max_interval_s = max_interval_s
        self.on_step = on_step
        self.on_active = on_active
        self.on_cancel = on_cancel
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.on_waiting = on_waiting
        self.on_admitted = on_admitted
        self._waiting: deque[_Waiting] = deque()
        """Only the thread reads and writes it."""
        self._reported_waiting = 0
        self._cv = threading.Condition()
        self._inbox: list[tuple[GenerateRequest, _Sink]] = []
        self._cancels: list[_Sink] = []
        self._sinks: dict[int, _Sink] = {}
        """Admitted requests by id; only the thread reads and writes it."""
        self._thread = threading.Thread(target=self._run, name="saeserve-generate", daemon=True)
        self._thread.start()

    async def stream(self, req: GenerateRequest) -> AsyncIterator[list[TokenEvent]]:
        """Events of one request, in groups, until each variant has finished; closing it
        cancels. The first events, a variant's last event and an error never wait for
        their group's interval."""
        sink = _Sink(asyncio.get_running_loop(), asyncio.Queue())
        self._post(lambda: self._inbox.append((req, sink)))
        remaining = 1 + int(req.include_baseline)
        try:
            while remaining:
                group = await sink.queue.get()
                if isinstance(group, BaseException):
                    raise group
                remaining -= sum(ev.finish_reason is not None for ev in group)
                yield group
        finally:
            if remaining:
                self._post(lambda: self._cancels.append(sink))

    def _post(self, put: Callable[[], None]) -> None:
        """Leave a request or a cancel for the thread (the lock is never held over a step)."""
        with self._cv:
            put()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (
                    self._inbox or self._cancels or self._waiting or self.generator.has_work()
                ):
                    self._cv.wait()
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            self._drop(cancels)
            self._admit(inbox)
            if not self.generator.has_work():
                continue
            try:
                with self.model_lock:
                    events = self.generator.step()
            except Exception as e:  # a bug: fail every open stream, keep serving
                log.exception("generation step failed")
                self._fail_all(e)
                continue
            if self.on_step:
                self.on_step(events)
            self.generator.has_work()  # drops rows that just finished
            if self.on_active:
                self.on_active(self.generator.n_sequences)
            self._hand_off(events)
            done = {ev.request_id for ev in events if ev.finish_reason is not None}
            for rid in done:
                if not self.generator.has_request(rid):
                    self._sinks.pop(rid, None)

    def _admit(self, inbox: list[tuple[GenerateRequest, _Sink]]) -> None:
        """Prepare each new request (a bad one gets its error at once) and queue it, then
        admit waiting requests in arrival order while the batch has room; a request that
        cannot wait (queue full) or has waited too long is refused."""
        now = time.monotonic()
        for req, sink in inbox:
            try:
                prepared = self.generator.prepare(req)
            except Exception as e:  # the engine's typed errors, for the stream to raise
                sink.fail(e)
                continue
            self._waiting.append(_Waiting(prepared, sink, now))
            self._admit_waiting(now)
            if len(self._waiting) > self.max_waiting:  # no room to wait: this one leaves
                full = self._full(f"{self.max_waiting} requests waiting")
                self._waiting.pop().sink.fail(ResourceExhausted(full))
        self._admit_waiting(now)
        while self._waiting and now - self._waiting[0].since > self.max_wait_s:
            expired = self._waiting.popleft()
            expired.sink.fail(ResourceExhausted(self._full(f"waited {self.max_wait_s:g} s")))
        if inbox and self.on_active:
            self.on_active(self.generator.n_sequences)
        if self.on_waiting and len(self._waiting) != self._reported_waiting:
            self._reported_waiting = len(self._waiting)
            self.on_waiting(self._reported_waiting)

    def _admit_waiting(self, now: float) -> None:
        """Admit waiting requests in arrival order while the batch has room."""
        while self._waiting and self.generator.fits(self._waiting[0].prepared):
            waiting = self._waiting.popleft()
            waiting.sink.request_id = self.generator.admit(waiting.prepared)
            self._sinks[waiting.sink.request_id] = waiting.sink
            if self.on_admitted:
                self.on_admitted(now - waiting.since)

    def _full(self, why: str) -> str:
        budget = self.generator.limits.generate_memory_bytes / MIB
        return (
            f"generation batch is full ({self.generator.max_batch_size} sequences, "
            f"generate_memory_bytes {budget:.0f} MiB; {why})"
        )

    def _drop(self, cancels: list[_Sink]) -> None:
        """Cancel the closed streams' requests; their rows leave before the next step."""
        closed = {id(sink) for sink in cancels}
        self._waiting = deque(w for w in self._waiting if id(w.sink) not in closed)
        for sink in cancels:
            rid = sink.request_id
            if rid is not None and self._sinks.pop(rid, None) is not None:
                self.generator.cancel(rid)
                if self.on_cancel:
                    self.on_cancel()
        if cancels:
            self.generator.has_work()  # drops the cancelled rows now
            if self.on_active:
                self.on_active(self.generator.n_sequences)

    def _hand_off(self, events: Iterable[TokenEvent]) -> None:
        """Buffer each event with its stream, and hand over the buffers that are due: one
        call into each event loop per step."""
        touched: dict[int, _Sink] = {}
        for ev in events:
            sink = self._sinks.get(ev.request_id)
            if sink is not None:
                sink.buffer.append(ev)
                touched[ev.request_id] = sink
        now = time.monotonic()
        interval = group_interval(len(self._sinks), self.interval_s, self.max_interval_s)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GroupQueue, Group]]] = {}
        for sink in touched.values():
            if sink.due(now, interval):
                by_loop.setdefault(sink.loop, []).append((sink.queue, sink.buffer))
                sink.buffer, sink.handed_at = [], now
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _fail_all(self, error: Exception) -> None:
        """Every open stream gets what it was owed, then the error."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GroupQueue, Group]]] = {}
        for rid, sink in self._sinks.items():
            items = by_loop.setdefault(sink.loop, [])
            if sink.buffer:
                items.append((sink.queue, sink.buffer))
            items.append((sink.queue, error))
            self.generator.cancel(rid)
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)
        self._sinks.clear()
