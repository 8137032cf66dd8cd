"""Activations of one hook point, streamed from a model over token contexts and shuffled.

``ActivationBuffer`` walks the contexts in a seeded random order (a fresh permutation per
epoch), runs the model on ``model_batch_size`` contexts at a time up to the hook point
(``forward_until`` stops there), drops the first ``skip_first_positions`` of every context,
and fills a buffer of about ``buffer_tokens`` activation vectors. The buffer is shuffled as a
whole, so one batch mixes tokens of many contexts, then served in batches of ``batch_size``
tokens; when it runs out it is refilled from the next contexts. Leftovers smaller than a
batch are dropped.

Resuming: the state is (epoch, context position, shuffle-generator state) at the start of the
current buffer plus the batches already served from it. ``load_state_dict`` recomputes that
buffer from the model, which gives the same activations and order as the uninterrupted run,
so checkpoints stay small (no activations in them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saeserve.errors import require

if TYPE_CHECKING:
    from saeserve.model.hookpoints import HookPoint
    from saeserve.model.loader import LoadedModel

log = logging.getLogger(__name__)

ActivationFn = Callable[[Tensor], Tensor]
"""Maps token ids [batch, seq] to activations [batch, seq, d] at the hook point."""


def hook_point_activations(lm: LoadedModel, point: HookPoint) -> ActivationFn:
    """An ActivationFn running ``lm`` up to ``point`` (and no further) on full contexts."""
    from saeserve.model.hookpoints import forward_until

    def run(input_ids: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def capture(x: Tensor) -> None:
            captured.append(x.detach())

        ids = input_ids.to(lm.device)
        with torch.no_grad():
            mask = torch.ones_like(ids)
            forward_until(
                lm, {point: capture}, point, input_ids=ids, attention_mask=mask, use_cache=False
            )
        require(
            len(captured) == 1, f"hook point {point.name}: ran {len(captured)} times, expected 1"
        )
        return captured[0]

    return run


class ActivationBuffer:
    """Shuffled batches [batch_size, d] of activations over ``contexts`` [n_contexts, seq]."""

    def __init__(
        self,
        contexts: Tensor,
        activations: ActivationFn,
        *,
        batch_size: int,
        buffer_tokens: int,
        model_batch_size: int,
        skip_first_positions: int = 0,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        require(contexts.ndim == 2 and contexts.shape[0] > 0, "contexts: need [n_contexts, seq]")
        self.contexts = contexts
        self.activations = activations
        self.batch_size = batch_size
        self.model_batch_size = max(1, model_batch_size)
        self.skip = skip_first_positions
        self.seed = seed
        self.device = torch.device(device)
        usable = contexts.shape[1] - skip_first_positions
        require(usable > 0, "skip_first_positions: leaves no position of a context")
        self.contexts_per_buffer = max(1, math.ceil(buffer_tokens / usable))
        self.batches_per_buffer = self.contexts_per_buffer * usable // batch_size
        require(
            self.batches_per_buffer > 0,
            f"buffer_tokens: {buffer_tokens} gives fewer tokens than one batch of {batch_size}",
        )
        self._shuffle = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0  # next context (index into this epoch's order) to read
        self._order = self._epoch_order(0)
        self._buffer: Tensor | None = None  # [batches_per_buffer * batch_size, d], shuffled
        self._served = 0  # batches served from the current buffer
        self._buffer_start: dict[str, Any] = {}

    # --- context order ----------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.contexts.shape[0], generator=gen)

    def _next_context_ids(self, count: int) -> Tensor:
        taken: list[Tensor] = []
        while count > 0:
            if self.position >= self._order.numel():
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
                log.warning(
                    "corpus exhausted: starting epoch %d over %d contexts (tokens repeat)",
                    self.epoch,
                    self.contexts.shape[0],
                )
            part = self._order[self.position : self.position + count]
            taken.append(part)
            self.position += part.numel()
            count -= part.numel()
        return torch.cat(taken)

    # --- buffer -----------------------------------------------------------------------------
    def _fill(self) -> None:
        self._buffer_start = {
            "epoch": self.epoch,
            "position": self.position,
            "shuffle": self._shuffle.get_state(),
        }
        ids = self.contexts[self._next_context_ids(self.contexts_per_buffer)]
        chunks: list[Tensor] = []
        for start in range(0, ids.shape[0], self.model_batch_size):
            acts = self.activations(ids[start : start + self.model_batch_size])  # [b, seq, d]
            chunks.append(
                acts[:, self.skip :].reshape(-1, acts.shape[-1]).to(self.device, torch.float32)
            )
        flat = torch.cat(chunks)
        perm = torch.randperm(flat.shape[0], generator=self._shuffle).to(self.device)
        keep = self.batches_per_buffer * self.batch_size
        self._buffer = flat[perm[:keep]]
        self._served = 0

    def _current(self) -> Tensor:
        if self._buffer is None or self._served >= self.batches_per_buffer:
            self._fill()
        assert self._buffer is not None
        return self._buffer

    def next_batch(self) -> Tensor:
        """The next batch [batch_size, d] (float32, on ``device``)."""
        buffer = self._current()
        start = self._served * self.batch_size
        self._served += 1
        return buffer[start : start + self.batch_size]

    def peek(self, n_tokens: int) -> Tensor:
        """Up to ``n_tokens`` activations from the current buffer without consuming them."""
        buffer = self._current()
        start = self._served * self.batch_size
        return buffer[start : start + n_tokens]

    @property
    def d(self) -> int:
        """Width of the activations."""
        return int(self._current().shape[-1])

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the stream is; restoring it replays the current buffer identically."""
        if self._buffer is None:
            start = {
                "epoch": self.epoch,
                "position": self.position,
                "shuffle": self._shuffle.get_state(),
            }
            return {**start, "served": 0}
        return {**self._buffer_start, "served": self._served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._epoch_order(self.epoch)
        self._shuffle.set_state(state["shuffle"])
        self._buffer = None
        served = int(state["served"])
        if served > 0:
            self._fill()
            self._served = served
