"""Measurement 3: 16 Decompose clients through the real gRPC service, against the engine.

16 concurrent clients, each sending one text of 32 tokens per Decompose call, as fast as
they are answered, for 20 s (quick: 3 s) after a 2 s warm-up, with the service's default
dynamic batching (``limits.max_batch_size`` 16). The baseline is the most the engine
itself does with the same texts: ``decompose`` in this process on batches of all 16
texts (the largest batch the service forms), requests/s = 16 / seconds per call
(``inprocess_rate``; batches of 8 are timed too, for the note). On a compute-bound CPU
batching on/off says little; what matters is how much of the engine's own throughput
survives the service. Targets: >= 0.8x the engine in-process; p99 latency <= 2x p50.
"""

from __future__ import annotations

import statistics

from bench.cpu_share import per_call, snapshot
from bench.load import LoadResult, closed_loop
from bench.report import Row, ms_text
from bench.stats import latency, repeat
from saeserve.engine.decompose import decompose
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest
from saeserve_client import AsyncSaeserveClient

N_CLIENTS = 16
TEXT_TOKENS = 32
TARGET_RPS = 0.8
TARGET_TAIL = 2.0


def inprocess_rate(
    served: ServedModel, texts: list[str], sae_id: str, batch: int, repeats: int
) -> float:
    """Decompose requests/s of the engine in this process on batches of ``batch`` texts
    (the service's default request: top_k 16, reconstruction included)."""
    req = DecomposeRequest(texts=texts[:batch], sae_ids=[sae_id])
    seconds = repeat(lambda: decompose(served, req), warmup=1, repeats=repeats)
    return batch / statistics.median(seconds)


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


def rows(on: LoadResult, engine: dict[int, float]) -> list[Row]:
    best = engine[N_CLIENTS]
    ratio = on.rate / best if best else float("nan")
    per_on = on.per_second()
    errors = len(on.errors)
    note = (
        f"{N_CLIENTS} clients x {TEXT_TOKENS}-token texts, {on.seconds:.0f} s; "
        f"{len(on.latencies)} requests; per-second completions: median {per_on.median:.0f} "
        f"(IQR {per_on.q1:.0f}-{per_on.q3:.0f}). The engine in-process: "
        + ", ".join(f"{r:.1f} req/s in batches of {b}" for b, r in sorted(engine.items()))
        + f". CPU through the service: {on.cpu}"
        + (f"; {errors} failed calls, first: {on.errors[0][:160]}" if errors else "")
    )
    lat = latency(on.latencies)
    tail = lat.p99 / lat.p50 if lat.p50 else float("nan")
    return [
        Row.judged(
            "batching_rps",
            baseline=f"engine in-process, batches of {N_CLIENTS}: {best:.1f} req/s",
            saeserve="service: " + _describe(on),
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
