"""Measurement 3: dynamic batching of Decompose through the real gRPC service.

16 concurrent clients, each sending one text of 32 tokens per Decompose call, as fast as
they are answered, for 20 s (quick: 3 s) after a 2 s warm-up: once with the service's
default batching (``limits.max_batch_size`` 16) and once with ``max_batch_size=1`` (no
batching), the app redeployed between the two. Targets: requests/s with batching >= 3x
without; with batching, p99 latency <= 2x p50. ``run_load`` is one such load; the
service module runs it on both deployments and ``rows`` judges them.
"""

from __future__ import annotations

from bench.cpu_share import per_call, snapshot
from bench.load import LoadResult, closed_loop
from bench.report import Row, ms_text
from bench.stats import latency
from saeserve_client import AsyncSaeserveClient

N_CLIENTS = 16
TEXT_TOKENS = 32
TARGET_RPS = 3.0
TARGET_TAIL = 2.0


def run_load(target: str, texts: list[str], sae_id: str, seconds: float) -> LoadResult:
    async def call(client: AsyncSaeserveClient, index: int, n: int) -> object:
        return await client.decompose(texts[(index + n) % len(texts)], saes=[sae_id])

    before = snapshot()
    result = closed_loop(target, n_clients=N_CLIENTS, seconds=seconds, warmup_s=2.0, call=call)
    result.cpu = per_call(before, snapshot(), result.calls_all)
    return result


def _describe(r: LoadResult) -> str:
    lat = latency(r.latencies)
    return f"{r.rate:.1f} req/s (p50 {ms_text(lat.p50)}, p99 {ms_text(lat.p99)})"


def rows(on: LoadResult, off: LoadResult) -> list[Row]:
    ratio = on.rate / off.rate if off.rate else float("nan")
    per_on, per_off = on.per_second(), off.per_second()
    errors = len(on.errors) + len(off.errors)
    note = (
        f"{N_CLIENTS} clients x {TEXT_TOKENS}-token texts, {on.seconds:.0f} s each; "
        f"{len(on.latencies)} requests with batching, {len(off.latencies)} without; "
        f"per-second completions: on median {per_on.median:.0f} (IQR {per_on.q1:.0f}-"
        f"{per_on.q3:.0f}), off median {per_off.median:.0f} (IQR {per_off.q1:.0f}-{per_off.q3:.0f})"
        + f". CPU with batching: {on.cpu}. CPU without: {off.cpu}"
        + (f"; {errors} failed calls, first: {(on.errors + off.errors)[0][:160]}" if errors else "")
    )
    lat = latency(on.latencies)
    tail = lat.p99 / lat.p50 if lat.p50 else float("nan")
    return [
        Row.judged(
            "batching_rps",
            baseline="off: " + _describe(off),
            saeserve="on: " + _describe(on),
            ratio=ratio,
            ratio_text=f"{ratio:.2f}x",
            target=f">= {TARGET_RPS:.1f}x",
            met=ratio >= TARGET_RPS and not errors,
            note=note,
        ),
        Row.judged(
            "batching_tail",
            baseline=f"p50 {ms_text(lat.p50)}",
            saeserve=f"p99 {ms_text(lat.p99)}",
            ratio=tail,
            ratio_text=f"{tail:.2f}x",
            target=f"p99 <= {TARGET_TAIL:.1f}x p50",
            met=tail <= TARGET_TAIL,
        ),
    ]
