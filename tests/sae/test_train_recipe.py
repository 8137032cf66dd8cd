"""The TopK training recipe on small tensors: each element checked against a by-hand reference.

Covers the sparse encoder/decoder gradients, FVU and Multi-TopK losses, unit-norm decoder
rows, removal of the decoder-parallel gradient, W_enc = W_dec.T init, the geometric-median
b_dec (Weiszfeld by hand), the dataset scale, the lr schedule, and AuxK reviving latents that
plain TopK leaves dead in a planted case. No model is needed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saeserve.sae.base import InputNorm
from saeserve.sae.metrics import normalized_mse
from saeserve.sae.train.config import TrainConfig
from saeserve.sae.train.geometric_median import geometric_median, sum_of_distances
from saeserve.sae.train.sparse_topk import decode_sparse, gather_pre_activations
from saeserve.sae.train.trainer import SaeTrainer

torch.set_num_threads(1)


def make_cfg(**overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(
        model="m", hook_point="resid_post.0", corpus="c", out="o",
        k=4, n=32, tokens=256 * 50, batch_size=256, progress=False, encoder_precision="float32",
    )  # fmt: skip
    return TrainConfig(**(base | overrides))  # type: ignore[arg-type]


def data(n_tokens: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n_tokens, d, generator=g) + 2.0


# --------------------------------------------------------------------------- sparse autograd


def test_sparse_encoder_gradients_equal_dense_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64, generator=g).requires_grad_()
    W = torch.randn(5, 13, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(13, dtype=torch.float64, generator=g).requires_grad_()
    pre = (x @ W + b).detach()
    idx = pre.topk(4, dim=-1).indices
    weights = torch.randn(9, 4, dtype=torch.float64, generator=g)

    (gather_pre_activations(x, W, b, pre, idx) * weights).sum().backward()
    sparse = [t.grad.clone() for t in (x, W, b)]  # type: ignore[union-attr]
    for t in (x, W, b):
        t.grad = None
    ((x @ W + b).gather(-1, idx) * weights).sum().backward()
    for got, t in zip(sparse, (x, W, b), strict=True):
        torch.testing.assert_close(got, t.grad)


def test_sparse_decode_equals_dense_matmul() -> None:
    g = torch.Generator().manual_seed(1)
    W_dec = torch.randn(13, 5, dtype=torch.float64, generator=g)
    idx = torch.randint(0, 13, (6, 3), generator=g)
    vals = torch.rand(6, 3, dtype=torch.float64, generator=g)
    dense = torch.zeros(6, 13, dtype=torch.float64).scatter_add_(1, idx, vals)
    torch.testing.assert_close(decode_sparse(vals, idx, W_dec), dense @ W_dec)


# --------------------------------------------------------------------------- losses


def test_fvu_equals_dense_sae_reconstruction_by_hand() -> None:
    trainer = SaeTrainer(make_cfg(), d_in=8)
    x = data(256)
    trainer.init_from_sample(x)
    sae = trainer.sae
    with torch.no_grad():
        x_n = x * sae.cfg.norm_scale
        pre = (x_n - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.topk(4, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
        x_hat = acts @ sae.W_dec + sae.b_dec
        expected = ((x_n - x_hat) ** 2).sum() / ((x_n - x_n.mean(0)) ** 2).sum()
        got = trainer.losses(x)
    assert got.fvu.item() == pytest.approx(expected.item(), rel=1e-5)
    # the saved SAE reconstructs in model space with the same FVU (the scale is recorded)
    assert normalized_mse(x, sae(x).detach()) == pytest.approx(expected.item(), rel=1e-4)


def test_multi_topk_adds_fvu_of_4k_latents_over_8() -> None:
    trainer = SaeTrainer(make_cfg(multi_topk=True), d_in=8)
    x = data(256)
    trainer.init_from_sample(x)
    sae = trainer.sae
    with torch.no_grad():
        x_n = x * sae.cfg.norm_scale
        pre = (x_n - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.topk(16, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
        x_hat = acts @ sae.W_dec + sae.b_dec
        expected = ((x_n - x_hat) ** 2).sum() / ((x_n - x_n.mean(0)) ** 2).sum()
        got = trainer.losses(x)
    assert got.multi_topk_fvu.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.total.item() == pytest.approx(got.fvu.item() + expected.item() / 8, rel=1e-5)
    assert got.l0.item() <= 4


# --------------------------------------------------------------------------- decoder geometry


def test_encoder_initialised_as_decoder_transpose_with_unit_rows() -> None:
    sae = SaeTrainer(make_cfg(), d_in=8).sae
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    assert torch.all(sae.b_enc == 0)


def test_decoder_rows_unit_norm_after_every_step() -> None:
    trainer = SaeTrainer(make_cfg(lr=0.05), d_in=8)
    x = data(256 * 5)
    trainer.init_from_sample(x)
    for step in range(5):
        before = trainer.sae.W_dec.detach().clone()
        trainer.train_step(x[step * 256 : (step + 1) * 256])
        assert not torch.equal(before, trainer.sae.W_dec)  # the step did move the rows
        torch.testing.assert_close(
            trainer.sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-6, rtol=0
        )


def test_gradient_parallel_to_decoder_rows_removed_before_step() -> None:
    x = data(256)
    raw = SaeTrainer(make_cfg(), d_in=8)
    raw.init_from_sample(x)
    raw.losses(x).total.backward()
    G = raw.sae.W_dec.grad
    assert G is not None
    W = raw.sae.W_dec.detach()
    parallel = (G * W).sum(-1)
    assert parallel.abs().max() > 1e-3  # there was a parallel component to remove

    trainer = SaeTrainer(make_cfg(), d_in=8)
    trainer.init_from_sample(x)
    trainer.compute_gradients(x)
    got = trainer.sae.W_dec.grad
    assert got is not None
    # by hand: g_i - (g_i . w_i) w_i, orthogonal to each (unit) row
    torch.testing.assert_close(got, G - parallel[:, None] * W)
    assert (got * trainer.sae.W_dec.detach()).sum(-1).abs().max() < 1e-6


# --------------------------------------------------------------------------- initialisation


def weiszfeld_by_hand(points: np.ndarray, iters: int = 2000) -> np.ndarray:
    m = points.mean(axis=0)
    for _ in range(iters):
        dist = np.maximum(np.sqrt(((points - m) ** 2).sum(axis=1)), 1e-12)
        m = (points / dist[:, None]).sum(axis=0) / (1.0 / dist).sum()
    return m


def outlier_sample(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    inliers = torch.randn(180, 6, generator=g, dtype=torch.float64)
    outliers = 50.0 + 10.0 * torch.randn(20, 6, generator=g, dtype=torch.float64)
    return torch.cat([inliers, outliers])


def test_geometric_median_matches_weiszfeld_by_hand() -> None:
    points = outlier_sample()
    expected = weiszfeld_by_hand(points.numpy())
    np.testing.assert_allclose(geometric_median(points).numpy(), expected, atol=1e-5)


def test_geometric_median_beats_mean_and_is_a_minimum() -> None:
    points = outlier_sample(1)
    median = geometric_median(points)
    mean = points.mean(0)
    assert sum_of_distances(points, median) < 0.8 * sum_of_distances(points, mean)
    assert median.norm() < 2.0 < mean.norm()  # the outliers barely move it
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        nudged = median + 0.05 * torch.randn(6, generator=g, dtype=torch.float64)
        assert sum_of_distances(points, median) <= sum_of_distances(points, nudged)
    # in 1-D the geometric median is the ordinary median
    line = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]], dtype=torch.float64)
    assert geometric_median(line).item() == pytest.approx(2.0, abs=1e-3)


def test_init_from_sample_sets_scale_and_b_dec() -> None:
    x = outlier_sample(3).float()
    trainer = SaeTrainer(make_cfg(), d_in=6)
    trainer.init_from_sample(x)
    scale = trainer.sae.cfg.norm_scale
    assert trainer.sae.cfg.input_norm is InputNorm.SCALE
    assert ((x * scale) ** 2).sum(-1).mean().item() == pytest.approx(6.0, rel=1e-5)
    expected = weiszfeld_by_hand((x.double() * scale).numpy())
    np.testing.assert_allclose(trainer.sae.b_dec.detach().numpy(), expected, atol=1e-4)


def test_layernorm_input_norm_takes_b_dec_in_normalised_space() -> None:
    x = data(300, d=6, seed=4)
    trainer = SaeTrainer(make_cfg(input_norm="layernorm"), d_in=6)
    trainer.init_from_sample(x)
    centered = x - x.mean(-1, keepdim=True)
    x_n = centered / (centered.std(-1, keepdim=True) + 1e-5)
    expected = weiszfeld_by_hand(x_n.double().numpy())
    np.testing.assert_allclose(trainer.sae.b_dec.detach().numpy(), expected, atol=1e-4)


# --------------------------------------------------------------------------- schedule


def test_default_lr_and_schedule() -> None:
    cfg = make_cfg(n=4096, tokens=100 * 256, lr_warmup_steps=10, lr_decay_fraction=0.2)
    trainer = SaeTrainer(cfg, d_in=8)
    peak = 2e-4 / math.sqrt(4096 / 2**14)
    assert trainer.cfg.lr == pytest.approx(peak)
    assert trainer.lr_at(0) == pytest.approx(peak / 10)
    assert trainer.lr_at(9) == pytest.approx(peak)
    assert trainer.lr_at(50) == pytest.approx(peak)
    assert trainer.lr_at(80) == pytest.approx(peak)  # decay starts at step 80 of 100
    assert trainer.lr_at(90) == pytest.approx(peak / 2)
    assert trainer.lr_at(99) == pytest.approx(peak / 20)
    assert trainer.lr_at(100) == 0.0
    resolved = make_cfg(n=64, tokens=10_000_000, batch_size=1000).resolved(d_in=768)
    assert resolved.k_aux == 64  # min(d_in / 2, n)
    assert make_cfg().resolved(d_in=8).k_aux == 4
    assert resolved.dead_tokens_threshold == 500_000  # tokens / 20, capped at 10M
    assert resolved.lr_warmup_steps == 500


def test_adam_uses_paper_hyperparameters() -> None:
    group = SaeTrainer(make_cfg(), d_in=8).optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999)
    assert group["eps"] == 6.25e-10


# --------------------------------------------------------------------------- AuxK

D, N_ALIVE, N_DEAD, K = 16, 8, 8, 2


def planted_batch(gen: torch.Generator, n_tokens: int = 256) -> torch.Tensor:
    """Each token: two of the features 0..7 (coefficients 1..2) plus one of 8..15 (2..3)."""
    alive = torch.rand(n_tokens, N_ALIVE, generator=gen).argsort(-1)[:, :2]
    dead = N_ALIVE + torch.randint(0, N_DEAD, (n_tokens,), generator=gen)
    x = torch.zeros(n_tokens, D)
    x.scatter_(1, alive, 1 + torch.rand(n_tokens, 2, generator=gen))
    x.scatter_(1, dead[:, None], 2 + torch.rand(n_tokens, 1, generator=gen))
    return x


def planted_trainer(auxk_coefficient: float) -> SaeTrainer:
    """Latents 0..7 encode features 0..7 exactly; latents 8..15 have tiny positive encoder
    weights on features 8..15 (so their pre-activations stay below the alive ones) and
    random decoder rows: under plain TopK they can never enter the top k."""
    cfg = make_cfg(
        n=N_ALIVE + N_DEAD, k=K, input_norm="none", tokens=256 * 300, lr=3e-3,
        lr_warmup_steps=1, lr_decay_fraction=0.0, dead_tokens_threshold=512,
        auxk_coefficient=auxk_coefficient,
    )  # fmt: skip
    trainer = SaeTrainer(cfg, d_in=D)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        eye = torch.eye(D)
        W_dec = torch.cat([eye[:N_ALIVE], torch.randn(N_DEAD, D, generator=g)])
        trainer.sae.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True))
        trainer.sae.W_enc.copy_(torch.cat([eye[:, :N_ALIVE], 0.05 * eye[:, N_ALIVE:]], dim=1))
    return trainer


def run_planted(
    auxk_coefficient: float, steps: int = 300
) -> tuple[SaeTrainer, torch.Tensor, float]:
    trainer = planted_trainer(auxk_coefficient)
    gen = torch.Generator().manual_seed(6)
    fired = torch.zeros(N_ALIVE + N_DEAD, dtype=torch.bool)
    fvu = 1.0
    for step in range(steps):
        x = planted_batch(gen)
        out = trainer.compute_gradients(x)
        if step >= steps - 50:
            fired |= out.fired
        fvu = trainer.apply_gradients(out, x.shape[0]).fvu
    return trainer, fired, fvu


def test_auxk_revives_latents_plain_topk_leaves_dead() -> None:
    plain, plain_fired, plain_fvu = run_planted(auxk_coefficient=0.0)
    assert not plain_fired[N_ALIVE:].any()  # planted latents never fire without AuxK
    assert plain.dead_fraction() == pytest.approx(N_DEAD / (N_ALIVE + N_DEAD))

    auxk, auxk_fired, auxk_fvu = run_planted(auxk_coefficient=1 / 32)
    assert auxk_fired[N_ALIVE:].sum() >= N_DEAD // 2  # most of them fire again
    assert auxk.dead_fraction() <= 0.25
    assert auxk_fvu < 0.8 * plain_fvu


def test_bfloat16_selection_matches_float32_losses() -> None:
    x = data(256)
    losses = []
    for precision in ("float32", "bfloat16"):
        trainer = SaeTrainer(make_cfg(encoder_precision=precision), d_in=8)
        trainer.init_from_sample(x)
        assert trainer.encoder_dtype == getattr(torch, precision)
        losses.append(trainer.losses(x).fvu.item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
