"""Batching, cancellation and metrics, seen through Ray's Prometheus endpoint."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from saeserve.engine.decompose import decompose
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest
from saeserve.sae.formats import load_sae
from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, Server


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, summed over Ray's per-replica labels."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(
                sorted(
                    (k, v)
                    for k, v in s.labels.items()
                    if k in {"rpc", "code", "transport", "variant", "mode", "reason", "le"}
                )
            )
            out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(item in ls for item in want)
    )


def delta(before: dict, now: dict, name: str, **labels: str) -> float:
    return value(now, name, **labels) - value(before, name, **labels)


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def test_counters_move(server: Server) -> None:
    before = scrape(server)
    resp = server.stub.Decompose(
        pb.DecomposeRequest(texts=["The cat sat on the mat."]), metadata=AUTH
    )
    n_tokens = len(resp.texts[0].tokens.ids)
    list(
        server.stub.Generate(
            pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=3)),
            metadata=AUTH,
        )
    )

    def moved() -> bool:
        now = scrape(server)
        return (
            value(now, "ray_saeserve_tokens_decomposed_total")
            - value(before, "ray_saeserve_tokens_decomposed_total")
            >= n_tokens
            and value(now, "ray_saeserve_tokens_generated_total", variant="steered")
            - value(before, "ray_saeserve_tokens_generated_total", variant="steered")
            >= 3
            and value(now, "ray_saeserve_requests_total", rpc="Decompose", code="OK")
            > value(before, "ray_saeserve_requests_total", rpc="Decompose", code="OK")
            and delta(before, now, "ray_saeserve_prompt_tokens_total") >= 1
            and delta(before, now, "ray_saeserve_time_to_first_token_seconds_count") >= 1
            and delta(before, now, "ray_saeserve_inter_token_seconds_count") >= 2
            and delta(before, now, "ray_saeserve_request_bytes_count", rpc="Decompose") >= 1
        )

    assert wait_for(moved), "saeserve counters did not move on the metrics endpoint"


def test_concurrent_decompose_calls_share_batches(server: Server) -> None:
    engine = ServedModel.load(server.model_path, name="tiny")
    for p in server.sae_paths:
        engine.add_sae(load_sae(p))
    texts = [f"Sentence number {i} is about the sea and the {i % 3} cats." for i in range(16)]
    before = scrape(server)
    results: dict[int, pb.DecomposeResponse] = {}
    barrier = threading.Barrier(len(texts))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = server.stub.Decompose(
            pb.DecomposeRequest(texts=[texts[i]], top_k=4, feature_ids=[i]), metadata=AUTH
        )

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, text in enumerate(texts):  # each caller gets its own, correct answer
        want = decompose(engine, DecomposeRequest(texts=[text], top_k=4, feature_ids=[i])).texts[0]
        got = results[i].texts[0]
        assert list(got.tokens.ids) == want.tokenization.token_ids
        for g, w in zip(got.saes, want.saes, strict=True):
            np.testing.assert_allclose(
                np.array(g.top_values).reshape(w.top_values.shape), w.top_values, atol=1e-5
            )
            np.testing.assert_allclose(
                np.array(g.dense_values), w.dense_values.reshape(-1), atol=1e-5
            )

    seen: list[tuple[float, float]] = []

    def batched() -> bool:
        now = scrape(server)
        requests = delta(before, now, "ray_saeserve_batch_size_sum", rpc="Decompose")
        batches = delta(before, now, "ray_saeserve_batch_size_count", rpc="Decompose")
        seen.append((requests, batches))
        return 0 < batches < requests  # mean batch size > 1

    assert wait_for(batched), f"not batched: (requests, batches) seen {seen[-3:]}"


def _wait_until_stopped(server: Server, before: dict, streams: int) -> None:
    """The replica counted `streams` cancelled generations and has no sequence left."""
    seen: list[tuple[float, float]] = []

    def stopped() -> bool:
        now = scrape(server)
        seen.append(
            (
                delta(before, now, "ray_saeserve_cancelled_generations_total"),
                value(now, "ray_saeserve_active_sequences"),
            )
        )
        return seen[-1][0] >= streams and seen[-1][1] == 0

    assert wait_for(stopped), f"generation kept running: (cancelled, active) seen {seen[-3:]}"


def test_a_stream_past_its_deadline_stops_generation(server: Server) -> None:
    """The client's deadline cancels the call; the replica drops the sequence at its next step."""
    before = scrape(server)
    # 240 tokens of the demo model take several times the deadline, so it lands mid-generation
    sampling = pb.SamplingParams(max_new_tokens=240, temperature=0, ignore_eos=True)
    req = pb.GenerateRequest(model="demo", prompt="Once", sampling=sampling)
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for chunk in server.stub.Generate(req, metadata=AUTH, timeout=0.15):
            received.append(chunk)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < len(received) < 240
    _wait_until_stopped(server, before, 1)
    generated = delta(before, scrape(server), "ray_saeserve_tokens_generated_total")
    assert generated < 240  # it stopped early


def test_every_cancelled_stream_stops_generation(server: Server) -> None:
    """A client's cancel, made right after it read a chunk, reaches the model replica every
    time (the case Ray Serve's gRPC proxy lost about 1 in 3; docs/notes-ray-grpc.md).

    Each stream is judged alone: the replica counts its cancel, unless the stream had
    already written all its tokens when the cancel arrived (the model can run ahead of
    a client reading a loaded machine's output)."""
    sampling = pb.SamplingParams(max_new_tokens=240, temperature=0, ignore_eos=True)
    req = pb.GenerateRequest(model="demo", prompt="Once", sampling=sampling)
    outcomes = []
    for i in range(6):
        before = scrape(server)
        call = server.stub.Generate(req, metadata=AUTH, timeout=60)
        for n, _ in enumerate(call, start=1):
            if n == 1 + i:  # after a different chunk each time
                call.cancel()
                break
        assert call.code() == grpc.StatusCode.CANCELLED

        def outcome(before: dict = before) -> tuple[float, float]:
            now = scrape(server)
            return (
                delta(before, now, "ray_saeserve_cancelled_generations_total"),
                delta(before, now, "ray_saeserve_tokens_generated_total"),
            )

        wait_for(lambda: outcome()[0] >= 1 or outcome()[1] >= 240)
        outcomes.append(outcome())
    assert all(c == 1 or g >= 240 for c, g in outcomes), outcomes
    assert any(c == 1 for c, _ in outcomes), outcomes
