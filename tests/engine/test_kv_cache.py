"""GrowingLayer against transformers' own DynamicLayer (torch.cat on every update)."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from saeserve.engine.kv_cache import SPARE_COLUMNS, GrowingLayer, growing_cache


def _kv(batch: int, tokens: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 2, tokens, 4, generator=gen), torch.randn(
        batch, 2, tokens, 4, generator=gen
    )


def _same(a: DynamicLayer, b: DynamicLayer) -> None:
    assert torch.equal(a.keys, b.keys)
    assert torch.equal(a.values, b.values)
    assert a.get_seq_length() == b.get_seq_length()


def test_updates_past_the_spare_columns_equal_concatenation() -> None:
    gen = torch.Generator().manual_seed(0)
    ours, ref = GrowingLayer(), DynamicLayer()
    with torch.inference_mode():  # as the engine runs it: views keep no _base there
        for n in [7] + [1] * (2 * SPARE_COLUMNS + 5) + [3]:
            k, v = _kv(3, n, gen)
            got = ours.update(k, v)
            want = ref.update(k, v)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    _same(ours, ref)


def test_single_token_updates_write_into_the_same_buffer() -> None:
    gen = torch.Generator().manual_seed(1)
    layer = GrowingLayer()
    with torch.inference_mode():
        layer.update(*_kv(2, 5, gen))
        first = layer.keys.data_ptr()
        for _ in range(SPARE_COLUMNS):
            layer.update(*_kv(2, 1, gen))
            assert layer.keys.data_ptr() == first  # no copy of the cache
        layer.update(*_kv(2, 1, gen))  # one past the spare columns: a new buffer
        assert layer.keys.data_ptr() != first
    assert layer.get_seq_length() == 5 + SPARE_COLUMNS + 1


def test_keys_assigned_from_outside_are_taken_over() -> None:
    """What the generator does when rows leave (index and trim) or join (cat)."""
    gen = torch.Generator().manual_seed(2)
    ours, ref = GrowingLayer(), DynamicLayer()
    with torch.inference_mode():
        for layer in (ours, ref):
            layer.update(*_kv(4, 6, torch.Generator().manual_seed(3)))
        keep = torch.tensor([0, 2])
        for layer in (ours, ref):
            layer.keys = layer.keys[keep, :, 2:]
            layer.values = layer.values[keep, :, 2:]
        for _ in range(3):
            k, v = _kv(2, 1, gen)
            ours.update(k, v)
            ref.update(k, v)
        _same(ours, ref)
        extra = _kv(1, ours.get_seq_length(), gen)
        for layer in (ours, ref):
            layer.keys = torch.cat([layer.keys, extra[0]])
            layer.values = torch.cat([layer.values, extra[1]])
        k, v = _kv(3, 1, gen)
        ours.update(k, v)
        ref.update(k, v)
    _same(ours, ref)


def test_growing_cache_makes_growing_layers() -> None:
    cache = growing_cache()
    k, v = _kv(1, 3, torch.Generator().manual_seed(4))
    cache.update(k, v, 0)
    cache.update(k, v, 1)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert cache.get_seq_length() == 3
