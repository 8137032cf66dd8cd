"""A KV cache whose layers append in place instead of concatenating.

transformers' ``DynamicLayer`` grows its keys and values with ``torch.cat`` on every
forward, so each decode step copies the whole cache: at batch 8 on the demo model that was
the largest single op of a step (a quarter of it), and it grows with the sequence.
``GrowingLayer`` keeps keys and values in buffers with spare columns and writes the new
tokens into them; ``keys``/``values`` are views of the filled part, so everything that
reads a ``DynamicLayer`` (attention, masks, ``get_seq_length``) works unchanged. When
someone assigns ``keys``/``values`` a tensor of their own (the generator does when rows
leave or join), the next update copies it into a fresh buffer.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_COLUMNS = 64
"""Columns a buffer holds beyond what it was filled with when (re)allocated."""


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into preallocated buffers; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._key_buffer: Tensor | None = None
        self._value_buffer: Tensor | None = None
        self._key_view: Tensor | None = None
        self._value_view: Tensor | None = None
        """The keys/values this layer last set: anything else was assigned from outside."""

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None  # set by lazy_initialization
        kb, vb = self._key_buffer, self._value_buffer
        filled = 0 if keys.numel() == 0 else keys.shape[-2]
        end = filled + key_states.shape[-2]
        # keys/values are still the views this layer made (not assigned from outside), and
        # the buffers have room: write in place; else copy into fresh buffers
        if not (
            kb is not None
            and vb is not None
            and keys is self._key_view
            and values is self._value_view
            and end <= kb.shape[-2]
        ):
            kb = self._key_buffer = _buffer_of(keys, key_states)
            vb = self._value_buffer = _buffer_of(values, value_states)
        kb[:, :, filled:end] = key_states
        vb[:, :, filled:end] = value_states
        self.keys = self._key_view = kb[:, :, :end]
        self.values = self._value_view = vb[:, :, :end]
        return self.keys, self.values


def _buffer_of(filled: Tensor, new: Tensor) -> Tensor:
    """A buffer [B, heads, filled + new + spare, head_dim] starting with ``filled``."""
    n_filled = 0 if filled.numel() == 0 else filled.shape[-2]
    shape = list(new.shape)
    shape[-2] = n_filled + new.shape[-2] + SPARE_COLUMNS
    buffer = new.new_empty(shape)
    if n_filled:
        buffer[:, :, :n_filled] = filled
    return buffer


def growing_cache() -> DynamicCache:
    """An empty cache whose layers are ``GrowingLayer``s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache
