"""The metric functions against formulas worked out by hand on tensors of a few numbers."""

from __future__ import annotations

import math

import pytest
import torch

from saeserve.sae.metrics import (
    ReconstructionStats,
    SpliceStats,
    ce_loss_score,
    dead_fraction,
    explained_variance,
    kl_divergence,
    l0,
    next_token_cross_entropy,
    normalized_mse,
)

X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
# mean (3, 4); |x - mean|^2 = 8 + 0 + 8 = 16
X_HAT = torch.tensor([[1.0, 3.0], [3.0, 4.0], [4.0, 6.0]])
# residuals (0,-1), (0,0), (1,0): |r|^2 sums to 2; mean r = (1/3, -1/3)
# |r - mean r|^2 = (1/9 + 4/9) + (1/9 + 1/9) + (4/9 + 1/9) = 12/9


def test_normalized_mse_by_hand() -> None:
    assert normalized_mse(X, X_HAT) == pytest.approx(2 / 16)
    assert normalized_mse(X, X) == 0.0
    assert normalized_mse(X, X.mean(0).expand(3, 2)) == pytest.approx(1.0)  # predicting the mean


def test_explained_variance_by_hand() -> None:
    assert explained_variance(X, X_HAT) == pytest.approx(1 - (12 / 9) / 16)
    # a constant offset is a bias: it costs normalized MSE but no explained variance
    assert explained_variance(X, X + 5.0) == pytest.approx(1.0)
    assert normalized_mse(X, X + 5.0) == pytest.approx(3 * 50 / 16)


def test_l0_and_dead_fraction_by_hand() -> None:
    latents = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 4.0, 5.0, 6.0]])
    assert l0(latents) == pytest.approx((2 + 1 + 3) / 3)
    assert dead_fraction((latents != 0).sum(0)) == pytest.approx(1 / 4)  # latent 0 never fires


def test_next_token_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0], [5.0, 5.0]]])
    tokens = torch.tensor([[0, 1, 0]])
    # position 0 predicts token 1: p = 3/4; position 1 predicts token 0: p = 2/3
    expected = torch.tensor([[-math.log(3 / 4), -math.log(2 / 3)]])
    torch.testing.assert_close(next_token_cross_entropy(logits, tokens), expected)


def test_kl_divergence_by_hand() -> None:
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.25, 0.5])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    got = kl_divergence(p.log()[None] + 7.0, q.log()[None] - 3.0)  # logits up to a constant
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert kl_divergence(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_ce_loss_score_by_hand() -> None:
    assert ce_loss_score(ce_clean=2.0, ce_sae=2.5, ce_zero_ablation=7.0) == pytest.approx(0.9)
    assert ce_loss_score(2.0, 2.0, 7.0) == 1.0
    assert ce_loss_score(2.0, 7.0, 7.0) == 0.0


def test_streaming_stats_equal_one_shot_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g) * 3 + 1
    x_hat = x + 0.5 * torch.randn(50, 4, generator=g) + 0.2
    latents = torch.relu(torch.randn(50, 6, generator=g) - 1.0)
    latents[:, 5] = 0  # one latent never fires
    stats = ReconstructionStats(6)
    for start in (0, 17, 33):
        end = {0: 17, 17: 33, 33: 50}[start]
        fires = (latents[start:end] != 0).sum(dim=0)  # [6] tokens each latent is active on
        stats.add(x[start:end], x_hat[start:end], fires)
    assert stats.tokens == 50
    assert stats.normalized_mse == pytest.approx(normalized_mse(x, x_hat), rel=1e-9)
    assert stats.explained_variance == pytest.approx(explained_variance(x, x_hat), rel=1e-9)
    assert stats.l0 == pytest.approx(l0(latents))
    assert stats.dead_fraction == pytest.approx(1 / 6)


def test_splice_stats_delta_ce_and_kl() -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (2, 4), generator=g)
    clean = torch.randn(2, 4, 5, generator=g)
    spliced = clean + 0.3 * torch.randn(2, 4, 5, generator=g)
    zero = torch.zeros(2, 4, 5)
    stats = SpliceStats()
    stats.add(tokens, clean, spliced, zero, from_position=1)
    means = stats.means()

    def ce(logits: torch.Tensor) -> float:  # positions 1..2 predict tokens 2..3
        logp = logits.log_softmax(-1)
        picks = [-logp[b, t, tokens[b, t + 1]] for b in range(2) for t in (1, 2)]
        return float(sum(picks)) / 4

    assert stats.positions == 4
    assert means["ce_clean"] == pytest.approx(ce(clean), rel=1e-6)
    assert means["ce_zero_ablation"] == pytest.approx(math.log(5), rel=1e-6)  # uniform
    assert means["delta_ce"] == pytest.approx(ce(spliced) - ce(clean), rel=1e-5, abs=1e-7)
    p, q = clean.softmax(-1)[:, 1:3], spliced.softmax(-1)[:, 1:3]
    assert means["kl_divergence"] == pytest.approx(float((p * (p / q).log()).sum() / 4), rel=1e-5)
