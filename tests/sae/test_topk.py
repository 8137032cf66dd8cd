"""``topk_largest`` against numpy's sort on rows wide and numerous enough for its chunked
path (and on the shapes that fall back to ``torch.topk``): same values, strongest first,
distinct indices that point at those values. Run: ``pytest tests/sae/test_topk.py -q``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeserve.sae.base import topk_largest

torch.set_num_threads(1)


def _check(x: torch.Tensor, k: int) -> None:
    values, indices = topk_largest(x, k)
    assert values.shape == indices.shape == (*x.shape[:-1], k)
    rows = x.reshape(-1, x.shape[-1]).numpy()
    want = -np.sort(-rows, axis=-1)[:, :k]
    got_v = values.reshape(-1, k).numpy()
    got_i = indices.reshape(-1, k).numpy()
    np.testing.assert_array_equal(got_v, want)
    np.testing.assert_array_equal(np.take_along_axis(rows, got_i, -1), want)
    assert all(len(set(r)) == k for r in got_i.tolist())


@pytest.mark.parametrize(
    ("shape", "k"),
    [
        ((200, 4096), 32),  # chunked, two levels of chunk maxima
        ((3, 70, 1024), 16),  # leading dims, chunked
        ((100, 512), 8),
        ((100, 256), 32),  # n <= 8k: torch.topk
        ((100, 1022), 16),  # n not a multiple of the chunk
        ((10, 4096), 32),  # few rows: torch.topk
        ((64, 128), 128),  # k == n
    ],
)
def test_equals_a_full_sort(shape: tuple[int, ...], k: int) -> None:
    g = torch.Generator().manual_seed(0)
    _check(torch.randn(*shape, generator=g), k)


def test_ties_and_infinities() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (128, 2048), generator=g).float()  # many equal values
    x[:5] = float("-inf")
    x[5:10, ::7] = float("inf")
    x[10, :] = 0.0
    _check(x, 32)


def test_all_top_entries_in_one_chunk() -> None:
    # chunk j holds x[j], x[j + n/4], ...: put a row's k largest into as few chunks as possible
    n, k = 4096, 32
    x = torch.randn(96, n, generator=torch.Generator().manual_seed(2))
    m = n // 4
    for j in range(k // 4):
        x[:, j + m * torch.arange(4)] = 10.0 + j
    _check(x, k)
