"""A background thread that steps the engine's BatchGenerator for every open Generate stream.

Streams (asyncio, on the replica's event loop) submit requests and read their events from
an asyncio queue; the thread runs one decode step for all running sequences at a time, so
concurrent streams share forward passes and a new stream joins at the next step. Each
step's events reach the event loop in one hand-off, and a stream yields every event that
is waiting at once, so a reader that falls behind catches up in fewer, larger pieces. A
stream that is closed (client cancelled, deadline passed) cancels its sequences, which
leave the batch before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterable

from saeserve.engine.generate import BatchGenerator
from saeserve.engine.types import GenerateRequest, TokenEvent

log = logging.getLogger(__name__)

EventQueue = asyncio.Queue[TokenEvent | BaseException]
EventSink = tuple[asyncio.AbstractEventLoop, EventQueue]


def _ends(item: TokenEvent | BaseException) -> bool:
    return isinstance(item, BaseException) or item.finish_reason is not None


def _deliver(items: list[tuple[EventQueue, TokenEvent | BaseException]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class GenerationLoop:
    def __init__(
        self,
        generator: BatchGenerator,
        model_lock: threading.Lock,
        *,
        on_step: Callable[[list[TokenEvent]], None] | None = None,
        on_active: Callable[[int], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self.generator = generator
        self.model_lock = model_lock
        self.on_step = on_step
        self.on_active = on_active
        self.on_cancel = on_cancel
        self._cv = threading.Condition()
        self._sinks: dict[int, EventSink] = {}
        self._thread = threading.Thread(target=self._run, name="saeserve-generate", daemon=True)
        self._thread.start()

    @property
    def active_sequences(self) -> int:
        return self.generator.n_sequences

    async def stream(
        self, req: GenerateRequest, *, interval_s: float = 0.0
    ) -> AsyncIterator[list[TokenEvent]]:
        """Events of one request, in groups, until each variant has finished; closing it
        cancels. A group holds the events ready together; with `interval_s` > 0, events
        that come sooner than that after the previous group wait (at most that long) to
        leave with the next, so a fast stream sends fewer, larger messages. The first
        event and a variant's last never wait."""
        loop = asyncio.get_running_loop()
        queue: EventQueue = asyncio.Queue()
        rid = await asyncio.to_thread(self._submit, req, (loop, queue))
        remaining = 1 + int(req.include_baseline)
        sent_at = -math.inf
        try:
            while remaining:
                ready = [await queue.get()]
                while not queue.empty():
                    ready.append(queue.get_nowait())
                until = sent_at + interval_s
                while not any(map(_ends, ready)) and (left := until - loop.time()) > 0:
                    try:
                        async with asyncio.timeout(left):
                            ready.append(await queue.get())
                    except TimeoutError:
                        break
                    while not queue.empty():
                        ready.append(queue.get_nowait())
                events: list[TokenEvent] = []
                for item in ready:
                    if isinstance(item, BaseException):
                        if events:
                            yield events
                        raise item
                    if item.finish_reason is not None:
                        remaining -= 1
                    events.append(item)
                sent_at = loop.time()
                yield events
        finally:
            if remaining:
                self._cancel(rid)

    def _submit(self, req: GenerateRequest, sink: EventSink) -> int:
        with self._cv:
            rid = self.generator.submit(req)
            self._sinks[rid] = sink
            self._cv.notify()
            return rid

    def _cancel(self, rid: int) -> None:
        with self._cv:
            if self._sinks.pop(rid, None) is not None:
                self.generator.cancel(rid)
                if self.on_cancel:
                    self.on_cancel()
                self.generator.has_work()  # drops the cancelled rows now
                if self.on_active:
                    self.on_active(self.generator.n_sequences)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self.generator.has_work():
                    self._cv.wait()
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
                self._hand_off((ev.request_id, ev) for ev in events)
                done = {ev.request_id for ev in events if ev.finish_reason is not None}
                for rid in done:
                    if not self.generator.has_request(rid):
                        self._sinks.pop(rid, None)

    def _hand_off(self, items: Iterable[tuple[int, TokenEvent | BaseException]]) -> None:
        """Put each item on its stream's queue: one call into each event loop per step."""
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[EventQueue, TokenEvent | BaseException]]
        ] = {}
        for rid, item in items:
            sink = self._sinks.get(rid)
            if sink is not None:
                loop, queue = sink
                by_loop.setdefault(loop, []).append((queue, item))
        for loop, batch in by_loop.items():
            loop.call_soon_threadsafe(_deliver, batch)

    def _fail_all(self, error: Exception) -> None:
        self._hand_off((rid, error) for rid in self._sinks)
        for rid in self._sinks:
            self.generator.cancel(rid)
        self._sinks.clear()
