"""Metrics: the names the dashboards rely on, recording, label checks, backend choice.

Records through the module-level handles into a fresh prometheus_client registry and reads
the exposition back with prometheus_client's parser, as a scraper would.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from saeserve.server import metrics

REQUIRED = {
    "saeserve_tokens_decomposed_total",
    "saeserve_tokens_generated_total",
    "saeserve_batch_size",
    "saeserve_active_sequences",
    "saeserve_sae_encode_seconds",
    "saeserve_requests_rejected_total",
    "saeserve_key_requests_total",
    "saeserve_key_tokens_total",
    "saeserve_request_bytes",
    "saeserve_prompt_tokens_total",
    "saeserve_time_to_first_token_seconds",
    "saeserve_inter_token_seconds",
    "saeserve_waiting_requests",
    "saeserve_queue_wait_seconds",
    "saeserve_interventions_total",
    "saeserve_accelerator_memory_bytes",
    "saeserve_requests_total",
    "saeserve_request_seconds",
    "saeserve_cancelled_generations_total",
    "saeserve_sae_resident_fraction",
}


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[CollectorRegistry]:
    monkeypatch.setattr(metrics, "_backend", None)
    yield metrics.use_prometheus()


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_names_cover_the_design_and_follow_conventions() -> None:
    assert set(metrics.METRIC_NAMES) == REQUIRED
    assert len(metrics.METRIC_NAMES) == len(set(metrics.METRIC_NAMES))
    assert ["ray_" + n for n in metrics.METRIC_NAMES] == metrics.RAY_METRIC_NAMES
    for spec in metrics.SPECS:
        assert spec.doc
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert (spec.kind == "histogram") == bool(spec.buckets), spec.name
        assert all(b > 0 for b in spec.buckets)  # Ray rejects non-positive boundaries
        assert list(spec.buckets) == sorted(spec.buckets)
        assert not {"deployment", "replica", "application"} & set(spec.labels)  # Serve's


def test_recorded_values_are_scraped(registry: CollectorRegistry) -> None:
    metrics.TOKENS_DECOMPOSED.inc(12)
    metrics.TOKENS_GENERATED.labels(variant="steered").inc()
    metrics.TOKENS_GENERATED.labels(variant="steered").inc()
    metrics.TOKENS_GENERATED.labels(variant="baseline").inc()
    metrics.BATCH_SIZE.labels(rpc="Decompose").observe(3)
    metrics.ACTIVE_SEQUENCES.set(5)
    metrics.ACTIVE_SEQUENCES.set(2)
    metrics.CANCELLED_GENERATIONS.inc()
    metrics.INTERVENTIONS.labels(mode="clamp").inc(2)
    metrics.REJECTED.labels(reason="queue_full").inc()
    metrics.observe_request("Decompose", "http", "OK", 0.2)
    got = _samples(registry)
    assert got[("saeserve_tokens_decomposed_total", ())] == 12
    assert got[("saeserve_tokens_generated_total", (("variant", "steered"),))] == 2
    assert got[("saeserve_tokens_generated_total", (("variant", "baseline"),))] == 1
    assert got[("saeserve_batch_size_count", (("rpc", "Decompose"),))] == 1
    assert got[("saeserve_batch_size_bucket", (("le", "2.0"), ("rpc", "Decompose")))] == 0
    assert got[("saeserve_batch_size_bucket", (("le", "4.0"), ("rpc", "Decompose")))] == 1
    assert got[("saeserve_active_sequences", ())] == 2
    assert got[("saeserve_cancelled_generations_total", ())] == 1
    assert got[("saeserve_interventions_total", (("mode", "clamp"),))] == 2
    assert got[("saeserve_requests_rejected_total", (("reason", "queue_full"),))] == 1
    labels = (("code", "OK"), ("rpc", "Decompose"), ("transport", "http"))
    assert got[("saeserve_requests_total", labels)] == 1
    seconds = (("rpc", "Decompose"), ("transport", "http"))
    assert got[("saeserve_request_seconds_sum", seconds)] == pytest.approx(0.2)


def test_label_and_kind_mistakes_fail_loudly(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="variant"):
        metrics.TOKENS_GENERATED.inc()  # labels missing
    with pytest.raises(ValueError, match="takes labels"):
        metrics.TOKENS_GENERATED.labels(varient="steered")
    with pytest.raises(ValueError, match="takes labels"):
        metrics.TOKENS_DECOMPOSED.labels(rpc="x")
    with pytest.raises(TypeError, match="gauge"):
        metrics.ACTIVE_SEQUENCES.inc()
    with pytest.raises(TypeError, match="counter"):
        metrics.TOKENS_DECOMPOSED.set(3)
    with pytest.raises(ValueError, match="only go up"):
        metrics.TOKENS_DECOMPOSED.inc(-1)
    assert ("saeserve_tokens_decomposed_total", ()) not in _samples(registry)


def test_prometheus_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_backend", None)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert isinstance(metrics.backend(), metrics.PrometheusBackend)
    assert metrics.backend().registry is metrics.REGISTRY  # type: ignore[attr-defined]


def test_ray_when_ray_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ray = types.SimpleNamespace(is_initialized=lambda: True)
    monkeypatch.setattr(metrics, "_backend", None)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    assert isinstance(metrics.backend(), metrics.RayBackend)


def test_ray_backend_names_and_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray adds ``_total`` to counters itself, so they are created without it."""
    pytest.importorskip("ray.serve.metrics")
    backend = metrics.RayBackend()
    by_name = {s.name: s for s in metrics.SPECS}
    counter = backend._metric(by_name["saeserve_tokens_generated_total"])
    histogram = backend._metric(by_name["saeserve_batch_size"])
    gauge = backend._metric(by_name["saeserve_active_sequences"])
    assert counter.info["name"] == "saeserve_tokens_generated"
    assert counter.info["tag_keys"] == ("variant",)
    assert histogram.info["name"] == "saeserve_batch_size"
    assert gauge.info["name"] == "saeserve_active_sequences"
    backend.record(by_name["saeserve_tokens_generated_total"], 1.0, {"variant": "steered"})
