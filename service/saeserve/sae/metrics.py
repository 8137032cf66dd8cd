"""SAE quality metrics: reconstruction (normalized MSE, explained variance), sparsity, and the
effect of splicing the reconstruction into the model (delta CE, CE-loss score, KL).

Definitions, over N tokens x_i [d] with reconstructions x_hat_i and residuals r_i = x_i - x_hat_i:

    normalized MSE      = sum_i |r_i|^2 / sum_i |x_i - mean(x)|^2          (= FVU)
    explained variance  = 1 - sum_i |r_i - mean(r)|^2 / sum_i |x_i - mean(x)|^2
    L0                  = mean_i #{latents with a nonzero activation}
    dead fraction       = fraction of latents that never activate on the tokens
    delta CE            = CE(reconstruction spliced in) - CE(clean)
    CE-loss score       = (CE_zero_ablation - CE_sae) / (CE_zero_ablation - CE_clean)
    KL                  = mean over positions of KL(p_clean || p_spliced)

Explained variance differs from 1 - normalized MSE only by the mean residual (a constant
bias in the reconstruction counts against normalized MSE, not against explained variance).
The streaming accumulators sum in float64, so a long evaluation equals the formula on the
concatenated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]).to(torch.float64)


def total_variance(x: Tensor) -> Tensor:
    """sum_i |x_i - mean(x)|^2 over the tokens of x [..., d] (float64 scalar)."""
    flat = _flat(x)
    return (flat - flat.mean(dim=0)).pow(2).sum()


def normalized_mse(x: Tensor, x_hat: Tensor) -> float:
    """sum |x - x_hat|^2 / sum |x - mean(x)|^2 over tokens of [..., d] tensors."""
    return float((_flat(x) - _flat(x_hat)).pow(2).sum() / total_variance(x))


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - sum |r - mean(r)|^2 / sum |x - mean(x)|^2 with r = x - x_hat."""
    return float(1.0 - total_variance(_flat(x) - _flat(x_hat)) / total_variance(x))


def l0(latents: Tensor) -> float:
    """Mean number of nonzero latents per token of dense latents [..., d_sae]."""
    return float((latents != 0).sum(dim=-1).to(torch.float64).mean())


def dead_fraction(fire_counts: Tensor) -> float:
    """Fraction of latents whose count of activations [d_sae] is zero."""
    return float((fire_counts == 0).to(torch.float64).mean())


def next_token_cross_entropy(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-position CE [batch, seq-1] of predicting tokens[:, 1:] from logits[:, :-1]."""
    logp = F.log_softmax(logits[:, :-1].to(torch.float32), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logp.device)).squeeze(-1)


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-position KL(p || q) [..., ] of two logit tensors [..., vocab]."""
    logp = F.log_softmax(logits_p.to(torch.float32), dim=-1)
    logq = F.log_softmax(logits_q.to(torch.float32), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def ce_loss_score(ce_clean: float, ce_sae: float, ce_zero_ablation: float) -> float:
    """(CE_zero - CE_sae) / (CE_zero - CE_clean): 1 for a perfect SAE, 0 for a zero one."""
    return (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean)


class ReconstructionStats:
    """Streams normalized MSE, explained variance, L0 and firing counts over batches."""

    def __init__(self, d_sae: int) -> None:
        self.tokens = 0
        self.sum_x: Tensor | None = None  # [d] float64
        self.sum_x2 = 0.0
        self.sum_r: Tensor | None = None
        self.sum_r2 = 0.0
        self.active = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.int64)

    def add(self, x: Tensor, x_hat: Tensor, fire_counts: Tensor | None = None) -> None:
        """Add tokens x, x_hat [..., d] and how many of them each latent is active on
        (``fire_counts`` [d_sae], for L0 and the dead fraction)."""
        fx, fr = _flat(x), _flat(x) - _flat(x_hat)
        self.tokens += fx.shape[0]
        self.sum_x = fx.sum(0) if self.sum_x is None else self.sum_x + fx.sum(0)
        self.sum_r = fr.sum(0) if self.sum_r is None else self.sum_r + fr.sum(0)
        self.sum_x2 += float(fx.pow(2).sum())
        self.sum_r2 += float(fr.pow(2).sum())
        if fire_counts is not None:
            fired = fire_counts.to("cpu", torch.int64)
            self.active += float(fired.sum())
            self.fire_counts += fired

    def _variance(self, total: Tensor | None, sum_sq: float) -> float:
        assert total is not None and self.tokens > 0
        return sum_sq - float(total.pow(2).sum()) / self.tokens

    @property
    def normalized_mse(self) -> float:
        return self.sum_r2 / self._variance(self.sum_x, self.sum_x2)

    @property
    def explained_variance(self) -> float:
        return 1.0 - self._variance(self.sum_r, self.sum_r2) / self._variance(
            self.sum_x, self.sum_x2
        )

    @property
    def l0(self) -> float:
        return self.active / max(1, self.tokens)

    @property
    def dead_fraction(self) -> float:
        return dead_fraction(self.fire_counts)


@dataclass
class SpliceStats:
    """Streams the CE / KL sums of clean, spliced and zero-ablated forward passes."""

    positions: int = 0
    ce_clean: float = 0.0
    ce_spliced: float = 0.0
    ce_zero: float = 0.0
    kl: float = 0.0

    def add(
        self, tokens: Tensor, clean: Tensor, spliced: Tensor, zero: Tensor, from_position: int = 0
    ) -> None:
        """Add one batch: token ids [batch, seq] and the three logit tensors [batch, seq, vocab].

        Only predictions made at positions >= from_position count (the spliced ones)."""
        s = slice(from_position, None)
        ce_clean = next_token_cross_entropy(clean, tokens)[:, s]
        self.positions += ce_clean.numel()
        self.ce_clean += float(ce_clean.to(torch.float64).sum())
        self.ce_spliced += float(
            next_token_cross_entropy(spliced, tokens)[:, s].to(torch.float64).sum()
        )
        self.ce_zero += float(next_token_cross_entropy(zero, tokens)[:, s].to(torch.float64).sum())
        self.kl += float(
            kl_divergence(clean[:, :-1], spliced[:, :-1])[:, s].to(torch.float64).sum()
        )

    def means(self) -> dict[str, float]:
        n = max(1, self.positions)
        clean, spliced, zero = self.ce_clean / n, self.ce_spliced / n, self.ce_zero / n
        return {
            "ce_clean": clean,
            "ce_spliced": spliced,
            "ce_zero_ablation": zero,
            "delta_ce": spliced - clean,
            "ce_loss_score": ce_loss_score(clean, spliced, zero) if zero != clean else float("nan"),
            "kl_divergence": self.kl / n,
        }
