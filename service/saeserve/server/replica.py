"""The model replica: one model, its SAEs and feature indexes, served to the ingress.

Decompose arrives in batches (the ingress groups concurrent requests, ``batcher.py``) and
runs as one engine forward; a batch whose requests include an invalid one falls back to
running each alone, so every caller gets its own answer or its own error. Generate
requests arrive as token ids (the ingress tokenizes), share the replica's
``GenerationLoop`` and send engine events in groups (``limits.stream_interval_s``, longer
when many streams are open); the ingress turns them into chunks. One lock serialises
forward passes, because hooks live on the shared model modules. InspectFeatures and
ContrastFeatures arrive as token ids too and run off the event loop, taking that lock
for each forward pass of their texts. Returns engine types and
protobuf messages; the ingress owns gRPC.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import torch

from saeserve.engine.attribution import (
    AttributionRequest,
    AttributionResult,
    FeatureInputRequest,
    FeatureInputResult,
    attribute,
    attribute_feature,
)
from saeserve.engine.decompose import decompose_many
from saeserve.engine.feature_stats import (
    ContrastRequest,
    InspectRequest,
    SaeActivity,
    SaeContrast,
    contrast_features,
    inspect_features,
)
from saeserve.engine.generate import BatchGenerator
from saeserve.engine.generation_loop import GenerationLoop
from saeserve.engine.served_model import ServedModel
from saeserve.engine.sharded_sae import ShardedSae
from saeserve.engine.types import (
    DecomposeRequest,
    DecomposeResult,
    GenerateRequest,
    TokenEvent,
)
from saeserve.errors import SaeserveError
from saeserve.model.loader import resolve_device
from saeserve.sae.base import Sae
from saeserve.sae.formats import read_sae
from saeserve.server import metrics
from saeserve.server.feature_view import FeatureView
from saeserve.server.sae_memory import ResidencySampler, load_configured_sae
from saeserve.server.settings import Limits, ModelSpec, SaeSpec
from saeserve.server.shard_replica import remote_shards
from saeserve.v1 import saeserve_pb2 as pb

log = logging.getLogger(__name__)

R = TypeVar("R")

INDEX_DIR = "feature_index"
"""Default subfolder of an SAE folder holding its feature index (SaeSpec.index overrides)."""


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def sharded_sae(spec: SaeSpec, handles: list[Any]) -> ShardedSae:
    """A sharded SAE's model-replica side: its config and b_dec (read memory-mapped; no
    other weight is touched here) and one ``RemoteShard`` per shard deployment."""
    cfg, tensors = read_sae(spec.path, sae_id=spec.effective_id, hook_point=spec.hook_point or None)
    return ShardedSae(cfg, tensors["b_dec"][1], remote_shards(spec, cfg.d_sae, handles))


class ModelReplica:
    def __init__(
        self,
        spec: dict[str, Any],
        limits: dict[str, Any],
        shards: dict[str, list[Any]] | None = None,
    ) -> None:
        """``shards``: each sharded SAE's shard deployment handles, in latent order."""
        self.spec = ModelSpec.model_validate(spec)
        self.limits = Limits.model_validate(limits)
        device = str(resolve_device(self.spec.device))
        dtype = resolve_dtype(self.spec.dtype, device)
        self.served = ServedModel.load(
            self.spec.path, device=device, dtype=dtype, name=self.spec.name
        )
        for s in self.spec.saes:
            sae: Sae
            if s.sharding is not None:
                sae = sharded_sae(s, (shards or {})[s.effective_id])
            else:
                sae = load_configured_sae(s, device)
            self.served.add_sae(sae)
        self.residency = ResidencySampler(
            self.spec.name, {i: h.sae for i, h in self.served.saes.items()}
        )
        self.residency.start()
        self.features = FeatureView.load(
            self.served, {s.effective_id: s.index_folder for s in self.spec.saes}
        )
        self.lock = threading.Lock()
        self._max_tokens = self.limits.tokens_per_text(self.served.lm.max_positions)
        self._last_step: float | None = None
        """time.monotonic() of the last decode step while sequences were running."""
        self.loop = GenerationLoop(
            BatchGenerator(
                self.served,
                max_batch_size=self.limits.max_concurrent_streams,
                limits=self.limits,
            ),
            self.lock,
            interval_s=self.limits.stream_interval_s,
            max_interval_s=self.limits.max_stream_interval_s,
            max_waiting=self.limits.max_waiting_streams,
            max_wait_s=self.limits.max_stream_wait_s,
            on_step=self._on_generate_step,
            on_active=self._on_active,
            on_cancel=metrics.CANCELLED_GENERATIONS.inc,
            on_waiting=metrics.WAITING.labels(rpc="Generate").set,
            on_admitted=metrics.QUEUE_WAIT.labels(rpc="Generate").observe,
        )
        log.info(
            "model %s loaded on %s (%s) with SAEs %s",
            self.spec.name,
            device,
            dtype,
            list(self.served.saes),
        )

    # --- facts -----------------------------------------------------------------------------
    def info(self) -> pb.ModelInfo:
        lm = self.served.lm
        info = pb.ModelInfo(
            name=lm.name,
            family=lm.layout.family,
            n_layers=lm.layout.n_layers,
            d_model=lm.layout.d_model,
            vocab_size=lm.vocab_size,
            max_positions=lm.max_positions,
            dtype=str(lm.dtype).removeprefix("torch."),
            has_chat_template=bool(getattr(lm.tokenizer, "chat_template", None)),
        )
        arch = {
            "topk": pb.SAE_ARCHITECTURE_TOPK,
            "jumprelu": pb.SAE_ARCHITECTURE_JUMPRELU,
            "relu": pb.SAE_ARCHITECTURE_RELU,
        }
        for h in self.served.saes.values():
            cfg = h.sae.cfg
            info.saes.add(
                id=h.id,
                hook_point=h.hook_point.name,
                d_in=cfg.d_in,
                d_sae=cfg.d_sae,
                architecture=arch[str(cfg.activation)],
                k=cfg.k or 0,
                has_feature_index=self.features.has_index(h.id),
                dtype=str(h.sae.dtype).removeprefix("torch."),
                weight_bytes=h.sae.weight_bytes(),
                shards=h.sae.n_shards,
            )
        return info

    def ready(self) -> bool:
        return True

    # --- decompose ----------------------------------------------------------------------------
    async def decompose_batch(
        self, reqs: list[DecomposeRequest]
    ) -> list[DecomposeResult | SaeserveError]:
        """One outcome per request, in order: its result, or its own error."""
        metrics.BATCH_SIZE.labels(rpc="Decompose").observe(len(reqs))
        return await asyncio.to_thread(self._decompose_now, reqs)

    def _decompose_now(self, reqs: list[DecomposeRequest]) -> list[DecomposeResult | SaeserveError]:
        with self.lock:
            try:
                return list(self._run_decompose(reqs))
            except SaeserveError as e:
                if len(reqs) == 1:
                    return [e]
            results: list[DecomposeResult | SaeserveError] = []
            for r in reqs:  # find which request was bad; the others still get answers
                try:
                    results.extend(self._run_decompose([r]))
                except SaeserveError as e:
                    results.append(e)
            return results

    def _run_decompose(self, reqs: list[DecomposeRequest]) -> list[DecomposeResult]:
        out = decompose_many(
            self.served,
            reqs,
            max_tokens=self._max_tokens,
            max_dense_values=self.limits.max_dense_values,
        )
        metrics.TOKENS_DECOMPOSED.inc(sum(r.n_tokens for r in out))
        for r in out:
            metrics.SAE_ENCODE_SECONDS.observe(r.sae_seconds)
        return out

    # --- feature statistics over whole texts ---------------------------------------------------
    # The forward lock is held per forward pass of the texts, not for the whole call, so a
    # contrast of many texts lets generation steps in between (and its statistics, host
    # numpy, never hold it).
    async def inspect_features(
        self, token_ids: list[int], req: InspectRequest
    ) -> list[SaeActivity] | SaeserveError:
        """The features that fire most over one text's ids (the ingress tokenized it)."""
        run = functools.partial(inspect_features, self.served, token_ids, req, lock=self.lock)
        return await asyncio.to_thread(self._answered, len(token_ids), run)

    async def contrast_features(
        self, token_ids_a: list[list[int]], token_ids_b: list[list[int]], req: ContrastRequest
    ) -> list[SaeContrast] | SaeserveError:
        """The features that separate texts A from texts B (the ingress tokenized them)."""
        n = sum(map(len, token_ids_a)) + sum(map(len, token_ids_b))
        run = functools.partial(
            contrast_features, self.served, token_ids_a, token_ids_b, req, lock=self.lock
        )
        return await asyncio.to_thread(self._answered, n, run)

    def _answered(self, n_tokens: int, run: Callable[[], R]) -> R | SaeserveError:
        """``run()``'s result, or the caller's mistake returned; counts the tokens."""
        try:
            out = run()
        except SaeserveError as e:
            return e
        metrics.TOKENS_DECOMPOSED.inc(n_tokens)
        return out

    # --- generate ---------------------------------------------------------------------------
    async def generate(
        self, req: GenerateRequest
    ) -> AsyncIterator[list[TokenEvent] | SaeserveError]:
        """The request's events in groups (the ingress tokenized the prompt and makes the
        chunks: this process runs the model, so it does as little else as it can). A
        caller's mistake ends the stream as its last item, not as a raised error, which
        Ray would log with a traceback on every bad request."""
        for iv in req.interventions:
            metrics.INTERVENTIONS.labels(mode=str(iv.mode)).inc()
        try:
            async for events in self.loop.stream(req):
                yield events
        except SaeserveError as e:
            yield e

    def _on_active(self, sequences: int) -> None:
        metrics.ACTIVE_SEQUENCES.set(sequences)
        if not sequences:  # idle: the next step's wait is no sequence's inter-token time
            self._last_step = None

    def _on_generate_step(self, events: list[TokenEvent]) -> None:
        """Metrics of one step (on the generation thread): each running sequence got one
        token, so the time since the previous step is their inter-token latency."""
        now = time.monotonic()
        if self._last_step is not None:
            metrics.INTER_TOKEN.observe(now - self._last_step)
        self._last_step = now
        metrics.BATCH_SIZE.labels(rpc="Generate").observe(len(events))
        for variant, n in Counter(str(ev.variant) for ev in events).items():
            metrics.TOKENS_GENERATED.labels(variant=variant).inc(n)
        if torch.cuda.is_available():
            metrics.ACCELERATOR_MEMORY.set(torch.cuda.memory_allocated())

    # --- features ----------------------------------------------------------------------------
    # A caller's mistake is returned, not raised: Ray logs a raised error with its traceback.
    def get_feature(self, sae_id: str, feature: int) -> pb.GetFeatureResponse | SaeserveError:
        try:
            return self.features.get(sae_id, feature)
        except SaeserveError as e:
            return e

    def search_features(
        self, query: str, sae_id: str, limit: int
    ) -> pb.SearchFeaturesResponse | SaeserveError:
        try:
            return self.features.search(query, sae_id, limit)
        except SaeserveError as e:
            return e

    # --- attribution -------------------------------------------------------------------------
    # One forward and one backward pass each, on a worker thread under the model lock (the
    # hooks live on the shared modules), taking turns with Decompose batches and decode
    # steps; gradients are enabled on that thread only.
    async def attribute(self, req: AttributionRequest) -> AttributionResult | SaeserveError:
        return await asyncio.to_thread(self._attribute_now, req)

    def _attribute_now(self, req: AttributionRequest) -> AttributionResult | SaeserveError:
        with self.lock:
            try:
                return attribute(self.served, req, field="attribute")
            except SaeserveError as e:
                return e

    async def attribute_feature(
        self, req: FeatureInputRequest
    ) -> FeatureInputResult | SaeserveError:
        return await asyncio.to_thread(self._attribute_feature_now, req)

    def _attribute_feature_now(
        self, req: FeatureInputRequest
    ) -> FeatureInputResult | SaeserveError:
        with self.lock:
            try:
                return attribute_feature(self.served, req, field="attribute_feature")
            except SaeserveError as e:
                return e
