"""Closed-loop load against the service: N asyncio clients, each calling as fast as answered.

``closed_loop`` runs ``n_clients`` coroutines for ``warmup_s + seconds``; each has its own
``AsyncSaeserveClient`` (its own channel, as separate users would) and calls ``call``
again as soon as the previous call returns. Calls that start during the warm-up are not
counted. The result holds every counted call's latency and its completion time, so a
rate can be summarised per second (median and spread) as well as overall.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.stats import Summary, summarize
from saeserve_client import NO_RETRY, AsyncSaeserveClient

Call = Callable[[AsyncSaeserveClient, int, int], Awaitable[object]]
"""(client, client index, call number) -> awaitable of one request."""


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    """Completion times, seconds after the end of the warm-up."""
    errors: list[str] = field(default_factory=list)
    calls_all: int = 0
    """Completed calls including the warm-up's and those that ended after the window."""
    cpu: str = ""
    """Where the CPU went per call (``bench.cpu_share.per_call``), when measured."""

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def per_second(self) -> Summary:
        """Completed calls in each whole second of the measured window."""
        buckets = [0] * max(1, int(self.seconds))
        for t in self.finished_at:
            if 0 <= t < len(buckets):
                buckets[int(t)] += 1
        return summarize([float(b) for b in buckets])


async def _closed_loop(
    target: str, n_clients: int, seconds: float, warmup_s: float, call: Call
) -> LoadResult:
    result = LoadResult(seconds)
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds

    async def client_loop(index: int) -> None:
        async with AsyncSaeserveClient(target, retry=NO_RETRY, timeout=120.0) as client:
            n = 0
            while (begin := time.perf_counter()) < stop_at:
                try:
                    await call(client, index, n)
                except Exception as e:  # counted, reported; the load goes on
                    result.errors.append(f"{type(e).__name__}: {e}")
                    continue
                finally:
                    n += 1
                end = time.perf_counter()
                result.calls_all += 1
                if begin >= measure_from and end <= stop_at:
                    result.latencies.append(end - begin)
                    result.finished_at.append(end - measure_from)

    await asyncio.gather(*(client_loop(i) for i in range(n_clients)))
    return result


def closed_loop(
    target: str, *, n_clients: int, seconds: float, warmup_s: float, call: Call
) -> LoadResult:
    return asyncio.run(_closed_loop(target, n_clients, seconds, warmup_s, call))
