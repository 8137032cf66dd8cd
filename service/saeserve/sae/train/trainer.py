"""One TopK SAE and the optimisation recipe of Gao et al. (2024), over batches of activations.

``SaeTrainer`` owns the ``Sae`` being trained, Adam and the dead-latent counters; it knows
nothing about models or corpora, so tests drive it with plain tensors. Per step:

    x_n   = normalize(x)                        # dataset scale or per-token LayerNorm
    pre   = (x_n - b_dec) @ W_enc + b_enc       # [batch, n], no autograd (bf16 where native)
    top   = topk(pre, k)                        # Multi-TopK: topk(pre, 4k), first k are top-k
    x_hat = relu(pre[top]) @ W_dec[top] + b_dec
    loss  = FVU(x_hat) [+ FVU(x_hat_4k) / 8] + c_aux * AuxK
    AuxK  = |e_hat - e|^2 / |e - mean(e)|^2     # e = x_n - x_hat (detached); e_hat decodes
                                                # the top k_aux *dead* latents (no b_dec)

FVU divides by the batch's total variance |x_n - mean(x_n)|^2. Before the Adam step the
gradient component parallel to each decoder row is removed; after it the rows are
renormalised to unit norm. Initialisation: random unit decoder rows, ``W_enc = W_dec.T``,
``b_enc = 0``, ``b_dec`` = geometric median of a sample (``init_from_sample``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saeserve.errors import require
from saeserve.sae.base import Activation, InputNorm, Sae, SaeConfig
from saeserve.sae.train.config import TrainConfig
from saeserve.sae.train.geometric_median import geometric_median
from saeserve.sae.train.sparse_topk import decode_sparse, gather_pre_activations

MULTI_TOPK_FACTOR = 4
MULTI_TOPK_WEIGHT = 1 / 8


class StepMetrics(NamedTuple):
    """What one optimizer step measured (SAE space, before the update)."""

    loss: float
    fvu: float
    auxk_loss: float
    multi_topk_fvu: float
    l0: float
    dead_fraction: float
    lr: float


@dataclass
class _Losses:
    total: Tensor
    fvu: Tensor
    auxk: Tensor
    multi_topk_fvu: Tensor
    l0: Tensor
    fired: Tensor  # [n] bool: latents with a positive activation in this batch


def _cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively here (AVX512-BF16 / AMX), i.e. faster."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def unit_norm_rows_(W_dec: Tensor) -> None:
    """Scale each row of W_dec [n, d] to unit norm, in place."""
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def remove_parallel_component_(grad: Tensor, W_dec: Tensor) -> None:
    """Subtract from each grad row its projection on the (unit-norm) W_dec row, in place."""
    grad.sub_((grad * W_dec).sum(dim=-1, keepdim=True) * W_dec)


class SaeTrainer:
    """Trains one TopK ``Sae`` on model-space activation batches [batch, d_in]."""

    def __init__(
        self,
        cfg: TrainConfig,
        d_in: int,
        *,
        device: torch.device | str = "cpu",
        model_name: str = "",
    ) -> None:
        self.cfg = cfg.resolved(d_in)
        self.device = torch.device(device)
        sae_cfg = SaeConfig(
            d_in=d_in,
            d_sae=cfg.n,
            activation=Activation.TOPK,
            k=cfg.k,
            hook_point=cfg.hook_point,
            model=model_name,
            input_norm=cfg.input_norm,
            id=cfg.sae_id,
        )
        self.sae = Sae(sae_cfg).to(self.device)
        self.sae.threshold.requires_grad_(False)  # JumpReLU only
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            W_dec = torch.randn(cfg.n, d_in, generator=gen)
            unit_norm_rows_(W_dec)
            self.sae.W_dec.copy_(W_dec)
            self.sae.W_enc.copy_(W_dec.T)
        self.optimizer = torch.optim.Adam(
            [self.sae.W_enc, self.sae.b_enc, self.sae.W_dec, self.sae.b_dec],
            lr=self.lr_at(0),
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
        )
        self.tokens_since_fired = torch.zeros(cfg.n, dtype=torch.int64, device=self.device)
        self._encoder_dtype = self.encoder_dtype
        self.step = 0
        self.tokens_seen = 0

    # --- initialisation from data -----------------------------------------------------------
    def init_from_sample(self, x: Tensor) -> None:
        """Set the dataset scale (``input_norm=scale``) and b_dec from a model-space sample."""
        x = x.to(self.device, torch.float32)
        if self.sae.cfg.input_norm is InputNorm.SCALE:
            mean_sq = x.pow(2).sum(dim=-1).mean().item()
            require(mean_sq > 0, "init sample: activations are all zero")
            self.sae.cfg.norm_scale = math.sqrt(self.sae.d_in / mean_sq)
        with torch.no_grad():
            x_n, _ = self.sae.normalize(x)
            self.sae.b_dec.copy_(geometric_median(x_n))

    # --- schedule ---------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to zero over the last fraction."""
        cfg = self.cfg
        peak = float(cfg.lr or 0.0)
        total = cfg.total_steps
        warmup = int(cfg.lr_warmup_steps or 0)
        decay_start = total - round(cfg.lr_decay_fraction * total)
        if step < warmup:
            return peak * (step + 1) / warmup
        if step >= decay_start:
            return peak * max(0, total - step) / max(1, total - decay_start)
        return peak

    # --- losses -----------------------------------------------------------------------------
    @property
    def encoder_dtype(self) -> torch.dtype:
        """dtype of the dense top-k selection matmul (see ``TrainConfig.encoder_precision``)."""
        precision = self.cfg.encoder_precision
        if precision == "auto":
            native = self.device.type == "cuda" or _cpu_has_native_bf16()
            return torch.bfloat16 if native else torch.float32
        return torch.bfloat16 if precision == "bfloat16" else torch.float32

    def losses(self, x: Tensor) -> _Losses:
        """The training losses of model-space activations x [batch, d_in] (autograd on)."""
        sae, cfg = self.sae, self.cfg
        k = cfg.k
        x_n, _ = sae.normalize(x.to(self.device, torch.float32))  # [batch, d]
        x_c = x_n - sae.b_dec
        with torch.no_grad():
            dtype = self._encoder_dtype
            pre = torch.addmm(sae.b_enc.to(dtype), x_c.to(dtype), sae.W_enc.to(dtype))  # [batch, n]
        n_selected = min(MULTI_TOPK_FACTOR * k, cfg.n) if cfg.multi_topk else k
        top = pre.topk(n_selected, dim=-1, sorted=cfg.multi_topk)
        values = F.relu(gather_pre_activations(x_c, sae.W_enc, sae.b_enc, pre, top.indices))
        indices = top.indices[:, :k]
        acts = values[:, :k]  # [batch, k]
        x_hat = decode_sparse(acts, indices, sae.W_dec) + sae.b_dec
        total_variance = (x_n - x_n.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        e = x_n - x_hat
        fvu = e.pow(2).sum() / total_variance
        total = fvu
        zero = torch.zeros((), device=self.device)

        multi_fvu = zero
        if cfg.multi_topk:
            x_hat_multi = decode_sparse(values, top.indices, sae.W_dec) + sae.b_dec
            multi_fvu = (x_n - x_hat_multi).pow(2).sum() / total_variance
            total = total + MULTI_TOPK_WEIGHT * multi_fvu

        auxk = self._auxk_loss(x_c, pre, e.detach()) if cfg.auxk_coefficient > 0 else None
        if auxk is not None:
            total = total + cfg.auxk_coefficient * auxk

        fire_counts = torch.zeros(cfg.n, device=self.device)
        fired = fire_counts.index_add_(0, indices.reshape(-1), (acts > 0).reshape(-1).float()) > 0
        l0 = (acts > 0).sum(dim=-1).to(torch.float32).mean()
        return _Losses(total, fvu, zero if auxk is None else auxk, multi_fvu, l0, fired)

    def _auxk_loss(self, x_c: Tensor, pre: Tensor, residual: Tensor) -> Tensor | None:
        """FVU of the residual [batch, d] reconstructed from the top k_aux dead latents (no
        b_dec), normalised by the residual's own variance as OpenAI's code does; None when
        no latent is dead."""
        sae = self.sae
        dead = self.tokens_since_fired >= int(self.cfg.dead_tokens_threshold or 0)
        if not bool(dead.any()):
            return None
        dead_ids = dead.nonzero().squeeze(1)
        k_aux = min(int(self.cfg.k_aux or 1), dead_ids.numel())
        local = pre.index_select(1, dead_ids).topk(k_aux, dim=-1, sorted=False).indices
        aux_ids = dead_ids[local]  # [batch, k_aux]
        aux_acts = F.relu(gather_pre_activations(x_c, sae.W_enc, sae.b_enc, pre, aux_ids))
        e_hat = decode_sparse(aux_acts, aux_ids, sae.W_dec)
        variance = (residual - residual.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        return (e_hat - residual).pow(2).sum() / variance

    # --- one step ---------------------------------------------------------------------------
    def compute_gradients(self, x: Tensor) -> _Losses:
        """Forward, backward, and removal of the decoder-parallel gradient; no update yet."""
        for p in self.optimizer.param_groups[0]["params"]:
            p.grad = None
        out = self.losses(x)
        out.total.backward()
        assert self.sae.W_dec.grad is not None
        with torch.no_grad():
            remove_parallel_component_(self.sae.W_dec.grad, self.sae.W_dec)
        return out

    def apply_gradients(self, out: _Losses, batch_tokens: int) -> StepMetrics:
        """The Adam step, decoder renormalisation and dead-latent bookkeeping."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        with torch.no_grad():
            unit_norm_rows_(self.sae.W_dec)
        self.tokens_since_fired += batch_tokens
        self.tokens_since_fired[out.fired] = 0
        self.step += 1
        self.tokens_seen += batch_tokens
        dead = (self.tokens_since_fired >= int(self.cfg.dead_tokens_threshold or 0)).float().mean()
        loss, fvu, auxk, multi, l0, dead_f = torch.stack(
            [
                out.total.detach(),
                out.fvu.detach(),
                out.auxk.detach(),
                out.multi_topk_fvu.detach(),
                out.l0,
                dead,
            ]
        ).tolist()
        return StepMetrics(loss, fvu, auxk, multi, l0, dead_f, lr)

    def train_step(self, x: Tensor) -> StepMetrics:
        """One optimizer step on model-space activations x [batch, d_in]."""
        return self.apply_gradients(self.compute_gradients(x), x.shape[0])

    def dead_fraction(self) -> float:
        """Fraction of latents that have not fired for ``dead_tokens_threshold`` tokens."""
        threshold = int(self.cfg.dead_tokens_threshold or 0)
        return float((self.tokens_since_fired >= threshold).float().mean())

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (weights-only loadable)."""
        return {
            "sae": {k: v.detach().clone() for k, v in self.sae.state_dict().items()},
            "norm_scale": float(self.sae.cfg.norm_scale),
            "optimizer": self.optimizer.state_dict(),
            "tokens_since_fired": self.tokens_since_fired.clone(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["sae"])
        self.sae.cfg.norm_scale = float(state["norm_scale"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
