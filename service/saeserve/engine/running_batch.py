"""The generator's running batch: its sequences, their left-padded mask and KV cache.

Rows join (a prefilled batch merged in) and leave (finished or cancelled) between steps;
both are surgery on the cache's [B, heads, T, head_dim] keys and values: leaving rows are
cut out and the columns now padded in every row dropped, joining batches are left-padded
to a common length and stacked. The attention mask lives in a buffer grown in chunks, so
a decode step does not copy it. A batch's ``SteeringPlan`` is built when its composition
is, never per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from saeserve.engine.detokenize import TextStream
from saeserve.engine.interventions import ResolvedCondition, ResolvedIntervention, SteeringPlan
from saeserve.engine.served_model import HookedSae
from saeserve.engine.types import FinishReason, SamplingParams, Variant


@dataclass
class RunningSequence:
    """One variant of one request: its prompt, settings and what it generated so far."""

    request_id: int
    variant: Variant
    prompt_ids: list[int]
    sampling: SamplingParams
    interventions: list[ResolvedIntervention]
    tracked: list[tuple[HookedSae, int]]
    logprobs: bool
    top_logprobs: int
    kl_from_baseline: bool
    stop_conditions: list[ResolvedCondition]
    generator: torch.Generator
    stream: TextStream
    generated: list[int] = field(default_factory=list)
    finished: FinishReason | None = None

    @property
    def next_position(self) -> int:
        """Position of the token fed at the next decode step (the last generated one)."""
        return len(self.prompt_ids) + len(self.generated) - 1


_MASK_CHUNK = 256
"""Columns the attention mask grows by when a decode step reaches its end."""


@dataclass
class RunningBatch:
    """Running rows, their left-padded attention mask and KV cache, and their steering.

    ``mask`` is the first ``length`` columns of ``mask_buffer`` [B, capacity].
    """

    rows: list[RunningSequence]
    mask_buffer: Tensor
    length: int
    cache: DynamicCache
    plan: SteeringPlan

    @classmethod
    def of(cls, rows: list[RunningSequence], mask: Tensor, cache: DynamicCache) -> RunningBatch:
        plan = SteeringPlan(
            [s.interventions for s in rows],
            [s.tracked for s in rows],
            [s.stop_conditions for s in rows],
        )
        return cls(rows, mask, mask.shape[1], cache, plan)

    @property
    def mask(self) -> Tensor:
        return self.mask_buffer[:, : self.length]

    def extend_mask(self) -> Tensor:
        """The mask with one more real column for every row."""
        if self.length == self.mask_buffer.shape[1]:
            grow = self.mask_buffer.new_zeros(len(self.rows), _MASK_CHUNK)
            self.mask_buffer = torch.cat([self.mask_buffer, grow], dim=-1)
        self.mask_buffer[:, self.length] = 1
        self.length += 1
        return self.mask

    def keep(self, kept: list[int]) -> RunningBatch:
        """The batch of rows ``kept`` (indices, at least one): their cache and mask, less
        the leading columns that are padding in every one of them."""
        idx = torch.tensor(kept, device=self.mask.device)
        mask = self.mask[idx]
        first = int(mask.any(dim=0).nonzero()[0].item())
        for layer, keys, values in _kv_layers(self.cache):
            layer.keys = keys[idx, :, first:]
            layer.values = values[idx, :, first:]
        return RunningBatch.of([self.rows[i] for i in kept], mask[:, first:], self.cache)

    def merge(self, other: RunningBatch) -> RunningBatch:
        """One batch of this one's rows then ``other``'s, the shorter left-padded."""
        t = max(self.length, other.length)
        layers = zip(_kv_layers(self.cache), _kv_layers(other.cache), strict=True)
        for (layer, ka, va), (_, kb, vb) in layers:
            layer.keys = torch.cat([_left_pad(ka, t, dim=2), _left_pad(kb, t, dim=2)])
            layer.values = torch.cat([_left_pad(va, t, dim=2), _left_pad(vb, t, dim=2)])
        mask = torch.cat([_left_pad(self.mask, t, dim=1), _left_pad(other.mask, t, dim=1)])
        return RunningBatch.of(self.rows + other.rows, mask, self.cache)


def _kv_layers(cache: DynamicCache) -> list[tuple[DynamicLayer, Tensor, Tensor]]:
    """Each layer of a dynamic cache with its keys and values [B, heads, T, head_dim]."""
    out = []
    for layer in cache.layers:
        assert (
            isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
        )
        out.append((layer, layer.keys, layer.values))
    return out


def _left_pad(x: Tensor, length: int, *, dim: int) -> Tensor:
    """x with zeros prepended along ``dim`` up to ``length`` (masked-out cache columns)."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
