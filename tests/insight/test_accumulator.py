"""FeatureAccumulator on hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saeserve.insight.accumulator import FeatureAccumulator, LogBins

GRID = LogBins(low=1.0, high=100.0, per_decade=2)  # inner edges 1, 3.162, 10, 31.62, 100


def batch(entries: list[tuple[int, int, int, float]], n_rows: int, k: int = 2):
    """(values, indices, rows, pos) from (context row, position, feature, value) entries,
    one token per (row, position), padded to k latents with zeros."""
    tokens = sorted({(r, p) for r, p, _, _ in entries})
    values = torch.zeros(len(tokens), k)
    indices = torch.zeros(len(tokens), k, dtype=torch.int64)
    filled = [0] * len(tokens)
    for r, p, f, v in entries:
        i = tokens.index((r, p))
        values[i, filled[i]], indices[i, filled[i]] = v, f
        filled[i] += 1
    for i, n in enumerate(filled):  # unused slots point at distinct features, value 0
        for j in range(n, k):
            indices[i, j] = 5 + j
    rows = torch.tensor([r for r, _ in tokens])
    pos = torch.tensor([p for _, p in tokens])
    return values, indices, rows, pos, n_rows


def make(n_top: int = 2, bins: int = 8) -> FeatureAccumulator:
    return FeatureAccumulator(
        8, n_top_contexts=n_top, context_length=4, histogram_bins=bins, grid=GRID
    )


def test_running_top_contexts_across_batches() -> None:
    acc = make(n_top=2)
    # batch 1: contexts 0, 1; batch 2: contexts 2, 3 (global ids)
    acc.add(*batch([(0, 1, 0, 2.0), (1, 0, 0, 5.0), (1, 2, 0, 0.5), (0, 3, 1, 7.0)], n_rows=2))
    acc.add(*batch([(0, 3, 0, 3.0), (0, 0, 0, 1.0), (1, 2, 0, 4.0), (1, 1, 0, 4.5)], n_rows=2))
    stats = acc.finish()
    assert stats.n_contexts == 4 and stats.n_tokens == 8
    # feature 0: per-context max 2.0 (ctx 0), 5.0 (ctx 1), 3.0 (ctx 2), 4.5 (ctx 3)
    assert stats.top.context[0].tolist() == [1, 3]
    assert stats.top.max_value[0].tolist() == [5.0, 4.5]
    assert stats.top.max_pos[0].tolist() == [0, 1]
    assert stats.top.context[1].tolist() == [0, -1]  # fired once: one slot empty
    n = 2
    rows = [
        dict(
            zip(
                stats.top.value_pos[
                    stats.top.value_offsets[s] : stats.top.value_offsets[s + 1]
                ].tolist(),
                stats.top.value[
                    stats.top.value_offsets[s] : stats.top.value_offsets[s + 1]
                ].tolist(),
                strict=True,
            )
        )
        for s in range(8 * n)
    ]
    assert rows[0 * n + 0] == {0: 5.0, 2: 0.5}  # context 1's values of feature 0
    assert rows[0 * n + 1] == {1: 4.5, 2: 4.0}  # context 3's
    assert rows[1 * n + 0] == {3: 7.0}
    assert rows[1 * n + 1] == {}
    assert stats.counts[0] == 7 and stats.counts[1] == 1 and stats.counts[2] == 0
    assert stats.max_activation[0] == 5.0
    assert stats.mean_activation[0] == pytest.approx((2 + 5 + 0.5 + 3 + 1 + 4 + 4.5) / 7)
    assert stats.mean_activation[2] == 0.0


def test_equal_values_keep_the_earlier_context() -> None:
    acc = make(n_top=1)
    acc.add(*batch([(0, 0, 3, 2.0)], n_rows=1))
    acc.add(*batch([(0, 1, 3, 2.0), (1, 2, 3, 2.0)], n_rows=2))
    assert acc.finish().top.context[3].tolist() == [0]


def test_histogram_merges_fine_bins_and_handles_under_and_overflow() -> None:
    acc = make(bins=2)
    # fine bins: [0,1) [1,3.16) [3.16,10) [10,31.6) [31.6,100) [100,inf)
    values = [0.5, 2.0, 5.0, 6.0, 50.0]  # feature 0: fine bins 0,1,2,2,4 -> span 5
    acc.add(*batch([(0, i, 0, v) for i, v in enumerate(values[:4])], n_rows=1))
    acc.add(*batch([(0, 0, 0, values[4]), (0, 1, 1, 250.0), (0, 2, 1, 120.0)], n_rows=1))
    stats = acc.finish()
    # span 5 fine bins into <= 2 bins: groups of 3 -> [0, 10) and [10, 100)
    assert stats.hist_n_bins[0] == 2
    np.testing.assert_allclose(stats.hist_edges[0], [0.0, 10.0, 100.0], rtol=1e-6)
    assert stats.hist_counts[0].tolist() == [4, 1]
    # feature 1 only overflows: one bin [100, max]
    assert stats.hist_n_bins[1] == 1
    np.testing.assert_allclose(stats.hist_edges[1][:2], [100.0, 250.0], rtol=1e-6)
    assert math.isnan(stats.hist_edges[1][2])
    assert stats.hist_counts[1].tolist() == [2, 0]
    assert stats.hist_n_bins[2] == 0 and np.isnan(stats.hist_edges[2]).all()
