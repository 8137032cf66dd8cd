"""The service's Prometheus metrics, recorded through Ray inside Serve, or prometheus_client.

Every metric is declared once in ``SPECS`` and used through a module-level handle with a
prometheus_client-like API: ``TOKENS_GENERATED.labels(variant="steered").inc()``,
``BATCH_SIZE.labels(rpc="Decompose").observe(8)``, ``ACTIVE_SEQUENCES.set(3)``.

Where the numbers go is decided at the first record in each process:

* inside Ray (``ray.is_initialized()``, i.e. in a Serve replica): ``ray.serve.metrics``,
  which adds ``deployment``, ``replica`` and ``application`` labels. Ray's metrics agent
  exports them on every node's metrics port (``ray.init(_metrics_export_port=...)`` /
  ``ray start --metrics-export-port``; ``ServerSettings.metrics_port``) beside
  ``ray_serve_*``, with Ray's ``ray_`` prefix: ``ray_saeserve_tokens_generated_total``.
  Workers report every ``metrics_report_interval_ms`` (10 s by default; start Ray with
  ``_system_config={"metrics_report_interval_ms": 1000}`` in tests, then a record shows
  up on the endpoint within about 2 s).
* otherwise: prometheus_client on the dedicated ``REGISTRY`` (unit tests, notebooks),
  exported under the names in ``METRIC_NAMES``; ``use_prometheus()`` forces it.

``METRIC_NAMES`` lists the names as prometheus_client exports them and ``RAY_METRIC_NAMES``
as they appear on Ray's endpoint; dashboards and their tests use the latter.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

Kind = Literal["counter", "gauge", "histogram"]

RAY_PREFIX = "ray_"
"""Prefix Ray's exporter puts before every application metric."""

SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
"""Request wall times, up to the longest Generate stream (512 tokens on a busy CPU)."""
BYTES_BUCKETS = tuple(float(4**i * 256) for i in range(10))  # 256 B .. 64 MiB
ENCODE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: name as prometheus_client exports it (counters end in ``_total``)."""

    name: str
    kind: Kind
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def base_name(self) -> str:
        """Name without the ``_total`` a counter gains on export."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("saeserve_requests_total", "counter", "Requests answered, by operation, transport (grpc, http) and status code.", ("rpc", "transport", "code")),
    MetricSpec("saeserve_request_seconds", "histogram", "Wall time of a request (a stream: to its end), by operation and transport.", ("rpc", "transport"), SECONDS_BUCKETS),
    MetricSpec("saeserve_requests_rejected_total", "counter", "Requests refused before any work, by reason.", ("reason",)),
    MetricSpec("saeserve_key_requests_total", "counter", "Requests admitted, by API key name.", ("key",)),
    MetricSpec("saeserve_key_tokens_total", "counter", "Tokens used (tokenized, decomposed, prompt, generated), by API key name.", ("key",)),
    MetricSpec("saeserve_request_bytes", "histogram", "Size of a request message (its protobuf encoding), by operation.", ("rpc",), BYTES_BUCKETS),
    MetricSpec("saeserve_prompt_tokens_total", "counter", "Generate prompt tokens (after chat templating)."),
    MetricSpec("saeserve_waiting_requests", "gauge", "Requests waiting for a batch, by rpc (Decompose: in this ingress; Generate: in this model replica).", ("rpc",)),
    MetricSpec("saeserve_queue_wait_seconds", "histogram", "Time a request waited for a batch, by rpc.", ("rpc",), SECONDS_BUCKETS),
    MetricSpec("saeserve_inter_token_seconds", "histogram", "Generate: time between a model replica's decode steps while sequences run (each running sequence gets one token a step).", (), ENCODE_BUCKETS),
    MetricSpec("saeserve_time_to_first_token_seconds", "histogram", "Generate: from the request's arrival to its first token leaving the ingress, by transport.", ("transport",), SECONDS_BUCKETS),
    MetricSpec("saeserve_tokens_decomposed_total", "counter", "Tokens run through the model and SAEs by Decompose."),
    MetricSpec("saeserve_tokens_generated_total", "counter", "Tokens generated, by variant (steered or baseline).", ("variant",)),
    MetricSpec("saeserve_batch_size", "histogram", "Sequences per forward pass, by rpc.", ("rpc",), SIZE_BUCKETS),
    MetricSpec("saeserve_active_sequences", "gauge", "Generate sequences being decoded in this replica."),
    MetricSpec("saeserve_sae_encode_seconds", "histogram", "SAE encode/decode time per batched forward pass.", (), ENCODE_BUCKETS),
    MetricSpec("saeserve_interventions_total", "counter", "Interventions applied to Generate requests, by mode.", ("mode",)),
    MetricSpec("saeserve_cancelled_generations_total", "counter", "Generate streams stopped because the caller left."),
    MetricSpec("saeserve_accelerator_memory_bytes", "gauge", "Accelerator memory allocated by this replica's torch."),
    MetricSpec("saeserve_sae_resident_fraction", "gauge", "Fraction (0..1) of an SAE's host-memory weight pages in memory (mincore), by model and SAE; below 1 the kernel evicted them and requests re-read them from disk.", ("model", "sae")),
)  # fmt: skip

METRIC_NAMES: list[str] = [s.name for s in SPECS]
"""Names as prometheus_client exports them (series of histograms add _bucket/_sum/_count)."""

RAY_METRIC_NAMES: list[str] = [RAY_PREFIX + s.name for s in SPECS]
"""Names as Ray's metrics endpoint exports them."""


class _Backend(Protocol):
    def record(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None: ...


class PrometheusBackend:
    """prometheus_client metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _metric(self, spec: MetricSpec) -> Any:
        with self._lock:
            if spec.name not in self._metrics:
                kw: dict[str, Any] = {"labelnames": spec.labels, "registry": self.registry}
                if spec.kind == "counter":
                    m: Any = PromCounter(spec.base_name, spec.doc, **kw)
                elif spec.kind == "gauge":
                    m = PromGauge(spec.name, spec.doc, **kw)
                else:
                    m = PromHistogram(spec.name, spec.doc, buckets=spec.buckets, **kw)
                self._metrics[spec.name] = m
            return self._metrics[spec.name]

    def record(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        metric = self._metric(spec)
        target = metric.labels(**labels) if spec.labels else metric
        if spec.kind == "counter":
            target.inc(value)
        elif spec.kind == "gauge":
            target.set(value)
        else:
            target.observe(value)


class RayBackend:
    """``ray.serve.metrics`` (Ray's metrics with Serve's replica labels added)."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _metric(self, spec: MetricSpec) -> Any:
        from ray.serve import metrics as serve_metrics

        with self._lock:
            if spec.name not in self._metrics:
                kw: dict[str, Any] = {"description": spec.doc, "tag_keys": spec.labels}
                if spec.kind == "counter":
                    m: Any = serve_metrics.Counter(spec.base_name, **kw)
                elif spec.kind == "gauge":
                    m = serve_metrics.Gauge(spec.name, **kw)
                else:
                    m = serve_metrics.Histogram(spec.name, boundaries=list(spec.buckets), **kw)
                self._metrics[spec.name] = m
            return self._metrics[spec.name]

    def record(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        metric = self._metric(spec)
        tags = labels or None
        if spec.kind == "counter":
            metric.inc(value, tags=tags)
        elif spec.kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)


REGISTRY = CollectorRegistry(auto_describe=True)
"""Registry of the prometheus_client backend (not the global default registry)."""

_backend: _Backend | None = None
_backend_lock = threading.Lock()


def _in_ray() -> bool:
    ray = sys.modules.get("ray")  # never import ray just to find out
    return ray is not None and bool(ray.is_initialized())


def backend() -> _Backend:
    """The backend of this process, chosen on first use."""
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = RayBackend() if _in_ray() else PrometheusBackend(REGISTRY)
        return _backend


def use_prometheus(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Record into prometheus_client from now on (a fresh registry unless one is given)."""
    global _backend
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    with _backend_lock:
        _backend = PrometheusBackend(registry)
    return registry


def use_ray() -> None:
    """Record through Ray from now on (Ray must be initialised to export anything)."""
    global _backend
    with _backend_lock:
        _backend = RayBackend()


class BoundMetric:
    """A metric with its label values fixed."""

    def __init__(self, spec: MetricSpec, labels: dict[str, str]) -> None:
        self.spec = spec
        self._labels = labels

    def _record(self, kind: Kind, value: float) -> None:
        if self.spec.kind != kind:
            raise TypeError(f"{self.spec.name} is a {self.spec.kind}")
        backend().record(self.spec, float(value), self._labels)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to a counter."""
        if amount < 0:
            raise ValueError(f"{self.spec.name}: counters only go up, got {amount}")
        self._record("counter", amount)

    def set(self, value: float) -> None:
        """Set a gauge."""
        self._record("gauge", value)

    def observe(self, value: float) -> None:
        """Add an observation to a histogram."""
        self._record("histogram", value)


class Metric(BoundMetric):
    """Module-level handle of one metric; ``labels(...)`` binds label values."""

    def __init__(self, spec: MetricSpec) -> None:
        super().__init__(spec, {})

    def labels(self, **values: object) -> BoundMetric:
        if set(values) != set(self.spec.labels):
            raise ValueError(
                f"{self.spec.name} takes labels {self.spec.labels}, got {tuple(values)}"
            )
        return BoundMetric(self.spec, {k: str(v) for k, v in values.items()})

    def _record(self, kind: Kind, value: float) -> None:
        if self.spec.labels:
            raise ValueError(
                f"{self.spec.name} needs labels {self.spec.labels}; call .labels() first"
            )
        super()._record(kind, value)


_BY_NAME = {s.name: Metric(s) for s in SPECS}
REQUESTS = _BY_NAME["saeserve_requests_total"]
REQUEST_SECONDS = _BY_NAME["saeserve_request_seconds"]
REJECTED = _BY_NAME["saeserve_requests_rejected_total"]
KEY_REQUESTS = _BY_NAME["saeserve_key_requests_total"]
KEY_TOKENS = _BY_NAME["saeserve_key_tokens_total"]
REQUEST_BYTES = _BY_NAME["saeserve_request_bytes"]
PROMPT_TOKENS = _BY_NAME["saeserve_prompt_tokens_total"]
TIME_TO_FIRST_TOKEN = _BY_NAME["saeserve_time_to_first_token_seconds"]
INTER_TOKEN = _BY_NAME["saeserve_inter_token_seconds"]
WAITING = _BY_NAME["saeserve_waiting_requests"]
QUEUE_WAIT = _BY_NAME["saeserve_queue_wait_seconds"]
TOKENS_DECOMPOSED = _BY_NAME["saeserve_tokens_decomposed_total"]
TOKENS_GENERATED = _BY_NAME["saeserve_tokens_generated_total"]
BATCH_SIZE = _BY_NAME["saeserve_batch_size"]
ACTIVE_SEQUENCES = _BY_NAME["saeserve_active_sequences"]
SAE_ENCODE_SECONDS = _BY_NAME["saeserve_sae_encode_seconds"]
INTERVENTIONS = _BY_NAME["saeserve_interventions_total"]
CANCELLED_GENERATIONS = _BY_NAME["saeserve_cancelled_generations_total"]
ACCELERATOR_MEMORY = _BY_NAME["saeserve_accelerator_memory_bytes"]
SAE_RESIDENT_FRACTION = _BY_NAME["saeserve_sae_resident_fraction"]


def observe_request(rpc: str, transport: str, code: str, seconds: float) -> None:
    """Count one answered request with its gRPC status code name and time it."""
    REQUESTS.labels(rpc=rpc, transport=transport, code=code).inc()
    REQUEST_SECONDS.labels(rpc=rpc, transport=transport).observe(seconds)
