"""Measurements 3, 4, 6 and 7 (replica): everything that runs through the real service.

Starts one local Ray Serve instance with the app ``saeserve`` (``bench.server``), then
runs, in this order: the service overhead (4), Decompose load with batching (3), the
concurrent Generate streams (6), HTTP against gRPC (9) and the replica's memory under
mixed load (7); last it
redeploys the app with ``limits.max_batch_size=1`` and runs the Decompose load again
without batching (3). A measurement that fails gets "not run" rows with its error, and
the others still run.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import torch

from bench import batching, http_api, overhead, replica_memory, streams
from bench.assets import bench_texts
from bench.context import Context, Mode
from bench.load import LoadResult
from bench.report import Row, Status
from bench.server import running_server

TARGETS = {
    "batching_rps": f">= {batching.TARGET_RPS:.1f}x",
    "batching_tail": f"p99 <= {batching.TARGET_TAIL:.1f}x p50",
    "overhead_tokenize": f"added p50 <= {overhead.TARGET_MS:.0f} ms",
    "overhead_decompose": f"added p50 <= {overhead.TARGET_MS:.0f} ms",
    "streams_4": "(no target)",
    "streams_8": f">= {streams.TARGET_8:.1f}x",
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
    load_s = ctx.pick(20, 3, 1)
    rows: list[Row] = []
    loads: dict[str, LoadResult] = {}

    def batching_load(name: str) -> list[Row]:
        loads[name] = batching.run_load(server.target, texts, sae_id, load_s)
        return []

    with running_server(ctx.assets, torch.get_num_threads()) as server:
        print(f"bench: service up at {server.target}", flush=True)
        rows += _guarded(
            ["overhead_tokenize", "overhead_decompose"],
            lambda: overhead.measure(
                served,
                server.target,
                sae_id,
                ctx.count(300, 60, 10),
                server.settings.limits.batch_wait_timeout_s,
            ),
        )
        rows += _guarded(["batching_rps", "batching_tail"], lambda: batching_load("on"))
        rows += _guarded(
            ["streams_4", "streams_8"],
            lambda: streams.measure(
                server.target, sae_id, ctx.count(64, 32, 8), ctx.count(3, 1, 1)
            ),
        )
        http_url = f"http://127.0.0.1:{server.settings.http_port}"
        rows += _guarded(
            ["http_latency"],
            lambda: [http_api.measure_latency(server.target, http_url, ctx.count(100, 30, 5))],
        )
        rows += _guarded(
            ["http_streams"],
            lambda: [
                http_api.measure_streams(
                    server.target, http_url, sae_id, ctx.count(64, 32, 8), ctx.count(3, 1, 1)
                )
            ],
        )
        rows += _guarded(
            ["memory_replica"],
            lambda: replica_memory.measure(
                server.target, long_texts, sae_id, d_sae, ctx.pick(60, 10, 3)
            ),
        )
    if "on" not in loads:
        return rows
    with running_server(ctx.assets, torch.get_num_threads(), max_batch_size=1) as server:
        print(f"bench: service without batching up at {server.target}", flush=True)
        rows += _guarded(["batching_rps", "batching_tail"], lambda: batching_load("off"))
        # how much of the 1-token Decompose overhead is the batch wait: none here
        nowait = _guarded(
            ["overhead_decompose"],
            lambda: overhead.measure(
                served, server.target, sae_id, ctx.count(300, 60, 10), 0.0, only_decompose=True
            ),
        )
    if "off" in loads:
        rows += batching.rows(loads["on"], loads["off"])
    for row in rows:
        if row.key == "overhead_decompose" and nowait and nowait[0].status is not Status.NOT_RUN:
            row.note += (
                f". With max_batch_size=1 (no batch wait) the same calls measure "
                f"{nowait[0].saeserve}: {nowait[0].ratio_text} added"
            )
    return rows
