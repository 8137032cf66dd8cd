"""Measurement 6: aggregate Generate throughput through the service with concurrent streams.

1, 4 and 8 streams start together, each greedy, exactly 64 new tokens (quick: 32;
``ignore_eos``, since the demo model often ends a greedy text within a few tokens), each with
its own interventions (ADD and SCALE on features no other stream uses), so the
replica's step-level batching must carry a different steering plan per row. The rate is
every stream's tokens over the time until the last one finishes; each level is run 3
times (quick: 1) and the median kept. Target: 8 streams >= 4x one stream.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.cpu_share import per_call, snapshot
from bench.report import Row
from saeserve_client import NO_RETRY, AsyncSaeserveClient, Steer

PROMPT = "Once upon a time there was a small town by the sea."
LEVELS = (1, 4, 8)
TARGET_8 = 4.0


async def run_streams(
    target: str, sae_id: str, n: int, new_tokens: int, *, steer: bool = True
) -> tuple[int, float]:
    """``n`` concurrent greedy streams (each its own ADD + SCALE, unless not ``steer``):
    (tokens, seconds until the last one ends)."""

    async def one(i: int) -> int:
        ivs = [Steer.add(sae_id, 10 + 2 * i, 4.0), Steer.scale(sae_id, 11 + 2 * i, 2.0)]
        count = 0
        async with (
            AsyncSaeserveClient(target, retry=NO_RETRY, timeout=300.0) as client,
            client.generate(
                PROMPT,
                max_new_tokens=new_tokens,
                temperature=0.0,
                ignore_eos=True,  # every stream writes new_tokens tokens
                interventions=ivs if steer else [],
            ) as stream,
        ):
            async for chunk in stream:
                count += chunk.token_id >= 0
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(counts), time.perf_counter() - start


def aggregate_rate(target: str, sae_id: str, n: int, new_tokens: int) -> float:
    tokens, seconds = asyncio.run(run_streams(target, sae_id, n, new_tokens))
    return tokens / seconds


def measure(target: str, sae_id: str, new_tokens: int, repeats: int) -> list[Row]:
    aggregate_rate(target, sae_id, 2, 8)  # warm-up: the first steps build caches
    spread: dict[int, list[float]] = {}
    cpu_before: dict[str, float] = {}
    cpu_after: dict[str, float] = {}
    for _ in range(repeats):
        for n in LEVELS:  # interleaved, so a slow phase hits every level
            if n == LEVELS[-1]:
                start = snapshot()
            spread.setdefault(n, []).append(aggregate_rate(target, sae_id, n, new_tokens))
            if n == LEVELS[-1]:
                end = snapshot()
                for k, v in start.items():
                    cpu_before[k] = cpu_before.get(k, 0.0) + v
                for k, v in end.items():
                    cpu_after[k] = cpu_after.get(k, 0.0) + v
    tokens_8 = LEVELS[-1] * new_tokens * repeats
    medians = {n: statistics.median(v) for n, v in spread.items()}
    single = medians[1]

    def text(n: int) -> str:
        lo, hi = min(spread[n]), max(spread[n])
        return f"{n} streams: {medians[n]:.1f} tok/s (range {lo:.1f}-{hi:.1f})"

    note = (
        f"greedy, {new_tokens} new tokens per stream, each stream its own ADD + SCALE "
        f"interventions; {repeats} run(s) per level, median. CPU per generated token with "
        f"{LEVELS[-1]} streams: {per_call(cpu_before, cpu_after, tokens_8).replace('request', 'token')}"
    )
    rows = []
    for key, n, goal in (("streams_4", 4, None), ("streams_8", 8, TARGET_8)):
        ratio = medians[n] / single
        rows.append(
            Row.judged(
                key,
                baseline=text(1),
                saeserve=text(n),
                ratio=ratio,
                ratio_text=f"{ratio:.2f}x",
                target=f">= {goal:.1f}x" if goal else "(no target)",
                met=goal is None or ratio >= goal,
                note=note if n == 8 else "",
            )
        )
    return rows
