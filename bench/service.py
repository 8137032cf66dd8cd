"""Measurements 3, 4, 6, 7 (replica) and 9: everything that runs through the real service.

First, in this process and before the service starts, the engine's Decompose throughput
on the load's batches (the baseline of 3); the plain model's batch-n greedy decode (the
baseline of 6) runs next to each streams run. Then it starts one local Ray Serve instance with the
app ``saeserve`` (``bench.server``) and runs, in this order: the service overhead (4),
the 16-client Decompose load (3), the concurrent Generate streams (6), HTTP against gRPC
(9) and the replica's memory under mixed load (7). A measurement that fails gets "not
run" rows with its error, and the others still run.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import torch

from bench import batching, decode, http_api, overhead, replica_memory, streams
from bench.assets import bench_texts
from bench.context import Context, Mode
from bench.load import LoadResult
from bench.report import Row
from bench.server import running_server

TARGETS = {
    "batching_rps": f">= {batching.TARGET_RPS:.1f}x",
    "batching_tail": f"p99 <= {batching.TARGET_TAIL:.1f}x p50",
    "overhead_tokenize": f"added p50 <= {overhead.TARGET_MS:.0f} ms",
    "overhead_decompose": f"added p50 <= {overhead.TARGET_MS:.0f} ms",
    **{f"streams_{n}": "(no target)" for n in streams.LEVELS[:-1]},
    f"streams_{streams.LEVELS[-1]}": f">= {streams.TARGET_8:.1f}x",
    "memory_replica": "growth <= 5% after warm-up",
    "http_latency": f"added p50 <= {http_api.TARGET_ADDED_MS:.0f} ms",
    "http_streams": f">= {http_api.TARGET_STREAMS:.1f}x",
}


def _guarded(keys: list[str], fn: Callable[[], list[Row]]) -> list[Row]:
    try:
        return fn()
    except Exception as e:
        traceback.print_exc()
        reason = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return [Row.not_run(k, TARGETS[k], reason) for k in keys]


def measure(ctx: Context) -> list[Row]:
    if ctx.mode is Mode.SMOKE:
        return [Row.not_run(k, t, "not part of the smoke run") for k, t in TARGETS.items()]
    served = ctx.served
    sae_id = ctx.assets.sae_id
    texts = bench_texts(served.lm.tokenizer, 16, batching.TEXT_TOKENS)
    long_texts = bench_texts(served.lm.tokenizer, 8, 96)
    d_sae = served.sae(sae_id).sae.d_sae
    load_s = ctx.pick(20, 3, 1, realistic=20)
    stream_tokens = ctx.count(64, 32, 8, realistic=32)
    stream_repeats = ctx.count(3, 1, 1, realistic=3)
    rows: list[Row] = []
    loads: dict[str, LoadResult] = {}

    print("bench: in-process baseline (engine Decompose batches)", flush=True)
    engine_rps = {
        b: batching.inprocess_rate(served, texts, sae_id, b, ctx.count(9, 3, 2, realistic=5))
        for b in (8, batching.N_CLIENTS)
    }

    def batching_load() -> list[Row]:
        loads["on"] = batching.run_load(server.target, texts, sae_id, load_s)
        return batching.rows(loads["on"], engine_rps)

    with running_server(ctx.assets, torch.get_num_threads()) as server:
        print(f"bench: service up at {server.target}", flush=True)
        rows += _guarded(
            ["overhead_tokenize", "overhead_decompose"],
            lambda: overhead.measure(
                served,
                server.target,
                sae_id,
                ctx.count(300, 60, 10, realistic=200),
                server.settings.limits.batch_wait_timeout_s,
            ),
        )
        rows += _guarded(["batching_rps", "batching_tail"], batching_load)
        rows += _guarded(
            [f"streams_{n}" for n in streams.LEVELS],
            lambda: streams.measure(
                server.target,
                sae_id,
                stream_tokens,
                stream_repeats,
                lambda n: decode.plain_rate(served, n, stream_tokens),
            ),
        )
        http_url = f"http://127.0.0.1:{server.settings.http_port}"
        rows += _guarded(
            ["http_latency"],
            lambda: [
                http_api.measure_latency(
                    server.target, http_url, ctx.count(100, 30, 5, realistic=40)
                )
            ],
        )
        rows += _guarded(
            ["http_streams"],
            lambda: [
                http_api.measure_streams(
                    server.target, http_url, sae_id, stream_tokens, stream_repeats
                )
            ],
        )
        rows += _guarded(
            ["memory_replica"],
            lambda: replica_memory.measure(
                server.target, long_texts, sae_id, d_sae, ctx.pick(60, 10, 3, realistic=40)
            ),
        )
    return rows
