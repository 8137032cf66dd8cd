"""Measurement 9: the HTTP API (Serve's HTTP proxy) against gRPC for the same generation.

Latency: one client, sequential, the same request both ways, interleaved call by call:
``POST /v1/completions`` (non-streamed, through Serve's HTTP proxy and the FastAPI app)
and gRPC Generate (read to its end), 8 greedy new tokens each, 100 pairs (quick: 30)
after a warm-up; the row is the difference of the p50s. (The bench model has no chat
template; a chat completion differs only by rendering the template, which gRPC Generate
with messages does in the same place.) The note gives the floor of Serve's HTTP path, from
the same client: a request FastAPI refuses at once (a 400 that reaches no operation) and
the proxy's own ``/-/healthz``. Throughput: 8 concurrent streams of 64 new tokens (quick:
32), ``stream: true`` server-sent events against gRPC streams, each side run 3 times
(quick: 1) alternately, medians compared. The HTTP side reads its streams with a plain
asyncio HTTP/1.1 reader that counts events, as light per message as grpc's C client, so
the row compares the servers (httpx would add its own parsing CPU to this 2-core machine).
Targets: HTTP adds <= 5 ms p50; HTTP keeps >= 0.9x gRPC's aggregate tokens/s.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit

import httpx

from bench import streams
from bench.report import Row, ms_text
from bench.server import MODEL_NAME
from bench.stats import latency, paired, repeat
from saeserve_client import NO_RETRY, SaeserveClient

TARGET_ADDED_MS = 5.0
TARGET_STREAMS = 0.9
N_STREAMS = 8
PROMPT = streams.PROMPT


def _completion_body(new_tokens: int, stream: bool) -> dict[str, object]:
    return {
        "model": MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": stream,
        "saeserve": {"ignore_eos": True},
    }


def measure_latency(target: str, http_url: str, calls: int) -> Row:
    body = _completion_body(8, stream=False)
    with (
        httpx.Client(base_url=http_url, timeout=60) as http,
        SaeserveClient(target, retry=NO_RETRY, timeout=60.0) as client,
    ):

        def over_http() -> object:
            return http.post("/v1/completions", json=body).raise_for_status()

        def over_grpc() -> object:
            return list(client.generate(PROMPT, max_new_tokens=8, temperature=0.0, ignore_eos=True))

        grpc_s, http_s = paired(over_grpc, over_http, warmup=max(5, calls // 10), repeats=calls)
        refused = latency(
            repeat(lambda: http.post("/v1/completions", json={}), warmup=5, repeats=calls)
        )
        healthz = latency(repeat(lambda: http.get("/-/healthz"), warmup=5, repeats=calls))
    g, h = latency(grpc_s), latency(http_s)
    added = 1000 * (h.p50 - g.p50)
    return Row.judged(
        "http_latency",
        baseline=f"gRPC Generate p50 {ms_text(g.p50)}, p99 {ms_text(g.p99)}",
        saeserve=f"HTTP /v1/completions p50 {ms_text(h.p50)}, p99 {ms_text(h.p99)}",
        ratio=added,
        ratio_text=f"{added:+.2f} ms (p99 {1000 * (h.p99 - g.p99):+.2f} ms)",
        target=f"added p50 <= {TARGET_ADDED_MS:.0f} ms",
        met=added <= TARGET_ADDED_MS,
        note=f"{calls} sequential pairs, interleaved; 8 greedy tokens each. The floor of "
        f"Serve's HTTP path from the same client: a request FastAPI refuses at once (reaching "
        f"no operation) p50 {ms_text(refused.p50)}; the proxy's own /-/healthz p50 "
        f"{ms_text(healthz.p50)}",
    )


async def _read_stream(host: str, port: int, body: bytes) -> int:
    """One SSE response read to its end over a plain HTTP/1.1 connection: its events."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    events, tail = 0, b""
    while data := await reader.read(65536):
        window = tail + data
        events += window.count(b"data: {") - tail.count(b"data: {")
        tail = window[-7:]
    writer.close()
    return events


async def _http_streams(http_url: str, n: int, new_tokens: int) -> tuple[int, float]:
    url = urlsplit(http_url)
    body = json.dumps(_completion_body(new_tokens, stream=True)).encode()
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(_read_stream(url.hostname or "127.0.0.1", url.port or 80, body) for _ in range(n))
    )
    return sum(counts), time.perf_counter() - start


def measure_streams(target: str, http_url: str, sae_id: str, new_tokens: int, repeats: int) -> Row:
    asyncio.run(_http_streams(http_url, 2, 8))  # warm-up
    rates: dict[str, list[float]] = {"grpc": [], "http": []}
    for _ in range(repeats):
        run = streams.run_streams(target, sae_id, N_STREAMS, new_tokens, steer=False)
        tokens, seconds = asyncio.run(run)
        rates["grpc"].append(tokens / seconds)
        tokens, seconds = asyncio.run(_http_streams(http_url, N_STREAMS, new_tokens))
        rates["http"].append(tokens / seconds)
    g, h = statistics.median(rates["grpc"]), statistics.median(rates["http"])
    ratio = h / g
    return Row.judged(
        "http_streams",
        baseline=f"gRPC: {g:.1f} tok/s",
        saeserve=f"HTTP SSE: {h:.1f} tok/s",
        ratio=ratio,
        ratio_text=f"{ratio:.2f}x",
        target=f">= {TARGET_STREAMS:.1f}x",
        met=ratio >= TARGET_STREAMS,
        note=f"{N_STREAMS} concurrent greedy streams of {new_tokens} tokens (ignore_eos), "
        f"no steering; {repeats} run(s) per side, alternating, median",
    )
