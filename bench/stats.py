"""Timing statistics for the benchmarks: warm-up, repeats, median and interquartile spread.

Every benchmark here compares a baseline and saeserve measured in the same run, so
``paired`` alternates the two (A B A B ...) after warming both up: slow phases of a noisy,
shared machine then hit both sides alike, and the ratio of the medians stays meaningful.
``Summary`` carries the median with the first and third quartiles; ``latency`` gives the
p50/p99 of a list of per-request latencies.

    base, ours = paired(plain_forward, decompose_batch, warmup=2, repeats=10)
    print(summarize(ours).median / summarize(base).median)
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median and quartiles of repeated samples (seconds, or a rate)."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = the middle half within 5%)."""
        return (self.q3 - self.q1) / self.median if self.median else math.inf


@dataclass(frozen=True)
class Latency:
    """Per-request latency percentiles, in seconds."""

    p50: float
    p99: float
    n: int


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between closest ranks; nan for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        return Summary(math.nan, math.nan, math.nan, 0)
    return Summary(
        statistics.median(samples), percentile(samples, 25), percentile(samples, 75), len(samples)
    )


def latency(samples: Sequence[float]) -> Latency:
    return Latency(percentile(samples, 50), percentile(samples, 99), len(samples))


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat(fn: Callable[[], object], *, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return [time_once(fn) for _ in range(repeats)]


def paired(
    baseline: Callable[[], object],
    candidate: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
) -> tuple[list[float], list[float]]:
    """Seconds per call of both functions, interleaved call by call after warming both up."""
    for _ in range(warmup):
        baseline()
        candidate()
    base, cand = [], []
    for i in range(repeats):
        # alternate which goes first, so neither always runs on a warmer cache
        if i % 2 == 0:
            base.append(time_once(baseline))
            cand.append(time_once(candidate))
        else:
            cand.append(time_once(candidate))
            base.append(time_once(baseline))
    return base, cand


def interleaved(
    fns: Sequence[Callable[[], object]], *, warmup: int, repeats: int
) -> list[list[float]]:
    """Seconds per call of each function, called in turn (rotating who goes first)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    seconds: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for j in range(len(fns)):
            at = (i + j) % len(fns)
            seconds[at].append(time_once(fns[at]))
    return seconds


def rates(seconds: Sequence[float], units: float) -> list[float]:
    """Units per second for each timed call that processed ``units`` units."""
    return [units / s for s in seconds]


def paired_ratio(base_seconds: Sequence[float], cand_seconds: Sequence[float]) -> Summary:
    """Speed of the candidate relative to the baseline, pair by pair (>1 = faster)."""
    return summarize([b / c for b, c in zip(base_seconds, cand_seconds, strict=True)])
