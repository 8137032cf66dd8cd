"""Measurement 6 (service part): Generate streams through the service against the plain model.

1, 2, 4 and 8 streams start together, each greedy, exactly 64 new tokens (quick and the
realistic profile: 32; ``ignore_eos``, so every stream writes them all), unsteered. The
rate is every stream's tokens over the time until the last one finishes; each level is
run 3 times (quick: 1), levels interleaved, and the median kept. The baseline of n
streams is the best this hardware does for n greedy rows: the plain model's own batch-n
decode in-process (``bench.decode.plain_greedy``: transformers forwards with a KV cache,
no steering), run next to each service run (the replica idles meanwhile). Target: 8 streams >= 0.8x
the plain batch-8 decode; 1, 2 and 4 streams are reported. ``run_streams`` can steer
each stream (ADD + SCALE on its own features), as the HTTP rows and the analysis use.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

from bench.cpu_share import add, per_call_text, snapshot, used
from bench.report import Row
from saeserve_client import NO_RETRY, AsyncSaeserveClient, Steer

PROMPT = "Once upon a time there was a small town by the sea."
LEVELS = (1, 2, 4, 8)
TARGET_8 = 0.8


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
    tokens, seconds = asyncio.run(run_streams(target, sae_id, n, new_tokens, steer=False))
    assert tokens == n * new_tokens, (tokens, n, new_tokens)
    return tokens / seconds


def measure(
    target: str,
    sae_id: str,
    new_tokens: int,
    repeats: int,
    plain_rate: Callable[[int], float],
) -> list[Row]:
    """``plain_rate(n)``: tokens/s of one plain batch-n decode of ``new_tokens`` in-process."""
    aggregate_rate(target, sae_id, 2, 8)  # warm-up: the first steps build caches
    plain_rate(LEVELS[-1])
    spread: dict[int, list[float]] = {n: [] for n in LEVELS}
    plain: dict[int, list[float]] = {n: [] for n in LEVELS}
    cpu: dict[str, float] = {}
    for i in range(repeats):
        for n in LEVELS:  # interleaved, so a slow phase hits every level and both sides
            if i % 2:
                plain[n].append(plain_rate(n))
            start = snapshot()
            spread[n].append(aggregate_rate(target, sae_id, n, new_tokens))
            if n == LEVELS[-1]:
                cpu = add(cpu, used(start, snapshot()))
            if not i % 2:
                plain[n].append(plain_rate(n))
    tokens_8 = LEVELS[-1] * new_tokens * repeats
    medians = {n: statistics.median(v) for n, v in spread.items()}
    plain_medians = {n: statistics.median(v) for n, v in plain.items()}

    def text(n: int) -> str:
        lo, hi = min(spread[n]), max(spread[n])
        streams = "stream" if n == 1 else "streams"
        return f"{n} {streams}: {medians[n]:.1f} tok/s (range {lo:.1f}-{hi:.1f})"

    note = (
        f"greedy, unsteered, {new_tokens} new tokens per stream; {repeats} run(s) per level, "
        f"each next to one plain decode in-process at the same batch size (order alternating); "
        f"ratios are medians of the per-run ratios. Service scaling: "
        + ", ".join(f"{n} streams {medians[n] / medians[1]:.2f}x one" for n in LEVELS[1:])
        + f". CPU per generated token with {LEVELS[-1]} streams: "
        + per_call_text(cpu, tokens_8).replace("request", "token")
    )
    rows = []
    for n in LEVELS:
        goal = TARGET_8 if n == LEVELS[-1] else None
        ratio = statistics.median(a / b for a, b in zip(spread[n], plain[n], strict=True))
        rows.append(
            Row.judged(
                f"streams_{n}",
                baseline=f"plain batch-{n} decode in-process: {plain_medians[n]:.1f} tok/s",
                saeserve=text(n),
                ratio=ratio,
                ratio_text=f"{ratio:.2f}x",
                target=f">= {goal:.1f}x" if goal else "(no target)",
                met=goal is None or ratio >= goal,
                note=note if n == LEVELS[-1] else "",
            )
        )
    return rows
