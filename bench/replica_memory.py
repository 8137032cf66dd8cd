"""Measurement 7 (service part): the model replica's resident memory under mixed gRPC load.

While 3 Decompose clients (1-4 texts of varied length), 2 steered Generate streams
(32 tokens, each call a new feature) and 1 Tokenize client run for 60 s (quick: 10 s),
a thread samples the replica process's RSS from /proc twice a second; ``judge_rss``
(shared with the engine part) reports RSS after warm-up, the peak (VmHWM) and growth.
Target: flat after warm-up (growth <= 5%).
"""

from __future__ import annotations

import threading

from bench.load import closed_loop
from bench.memory import judge_rss
from bench.memory_worker import proc_status_mib, sample_rss
from bench.report import Row
from bench.server import replica_pid
from saeserve_client import AsyncSaeserveClient, Steer

N_DECOMPOSE, N_GENERATE, N_TOKENIZE = 3, 2, 1


def measure(target: str, texts: list[str], sae_id: str, d_sae: int, seconds: float) -> list[Row]:
    pid = replica_pid()

    async def call(client: AsyncSaeserveClient, index: int, n: int) -> object:
        text = texts[(index + n) % len(texts)]
        if index < N_DECOMPOSE:
            batch = [t[: 40 + 20 * ((n + j) % 5)] for j, t in enumerate(texts[: 1 + n % 4])]
            return await client.decompose(batch, saes=[sae_id], top_k=8)
        if index < N_DECOMPOSE + N_GENERATE:
            steer = [Steer.add(sae_id, (7 * n + index) % d_sae, 4.0)]
            async with client.generate(
                text[:60], max_new_tokens=32, temperature=0.8, seed=n, interventions=steer
            ) as stream:
                return [c async for c in stream]
        return await client.tokenize(text)

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(stop, samples, pid), daemon=True)
    sampler.start()
    try:
        load = closed_loop(
            target,
            n_clients=N_DECOMPOSE + N_GENERATE + N_TOKENIZE,
            seconds=seconds,
            warmup_s=0.0,
            call=call,
        )
    finally:
        stop.set()
        sampler.join()
    peak = proc_status_mib("VmHWM", pid)
    detail = (
        f"replica pid {pid}, {seconds:.0f} s: {N_DECOMPOSE} Decompose clients, {N_GENERATE} "
        f"steered Generate streams, {N_TOKENIZE} Tokenize client; {len(load.latencies)} calls"
        + (f", {len(load.errors)} failed (first: {load.errors[0][:120]})" if load.errors else "")
    )
    return [
        judge_rss(
            "memory_replica",
            samples,
            load_start_s=0.0,
            seconds=seconds,
            peak_mib=peak,
            detail=detail,
        )
    ]
