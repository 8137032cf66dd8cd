"""``Sae.encode_sparse``, the one path the service reads latents by, against the SAE formula
in float64 numpy (``tests/engine/reference.encode``): for every architecture and input
norm, the k strongest latents, chosen features' exact values, the reconstruction and the
firing counts, in one block or in many. Run: ``pytest tests/sae/test_encode_sparse.py -q``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeserve.sae.base import MATMUL_ROWS, Sae, SaeConfig
from tests.engine import reference

D_IN, D_SAE, K = 16, 96, 6
FEATURES = [0, 7, 50, 95]


def random_sae(activation: str, input_norm: str, seed: int = 0) -> Sae:
    cfg = SaeConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        activation=activation,
        k=K if activation == "topk" else None,
        input_norm=input_norm,
        norm_scale=0.7,
    )
    sae = Sae(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize("input_norm", ["none", "layernorm", "scale"])
@pytest.mark.parametrize("block_rows", [1, 5, 1000])
def test_equals_the_formula(activation: str, input_norm: str, block_rows: int) -> None:
    sae = random_sae(activation, input_norm)
    x = torch.randn(23, D_IN, generator=torch.Generator().manual_seed(1)) + 0.3
    want_a, want_recon = reference.encode(sae, x.double().numpy())  # [T, d_sae], [T, d_in]
    k = 4
    with torch.no_grad():
        enc = sae.encode_sparse(
            x,
            k=k,
            features=torch.tensor(FEATURES),
            reconstruct=True,
            count_fires=True,
            block_bytes=block_rows * D_SAE * 4,
        )
    want_top = -np.sort(-want_a, axis=-1)[:, :k]
    np.testing.assert_allclose(enc.values.numpy(), want_top, rtol=1e-5, atol=1e-5)
    got_at = np.take_along_axis(want_a, enc.indices.numpy(), -1)
    np.testing.assert_allclose(got_at, want_top, rtol=1e-5, atol=1e-5)  # ids point at them
    assert enc.features is not None and enc.reconstruction is not None
    np.testing.assert_allclose(enc.features.numpy(), want_a[:, FEATURES], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(enc.reconstruction.numpy(), want_recon, rtol=1e-4, atol=1e-4)
    assert enc.fire_counts is not None
    np.testing.assert_array_equal(enc.fire_counts.numpy(), (want_a != 0).sum(0))
    assert np.count_nonzero(want_a[:, FEATURES]) > 0  # the comparison is not vacuous


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_features_alone_keep_leading_dims(activation: str) -> None:
    """Steering asks for a few features of [rows, positions, d_in]; a ReLU or JumpReLU SAE
    then reads only their encoder columns, a TopK SAE still ranks every latent."""
    sae = random_sae(activation, "layernorm", seed=2)
    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(3))
    want_a, _ = reference.encode(sae, x.reshape(-1, D_IN).double().numpy())
    with torch.no_grad():
        enc = sae.encode_sparse(x, features=torch.tensor(FEATURES))
    assert enc.features is not None and enc.features.shape == (3, 5, len(FEATURES))
    np.testing.assert_allclose(
        enc.features.reshape(-1, len(FEATURES)).numpy(),
        want_a[:, FEATURES],
        rtol=1e-5,
        atol=1e-5,
    )
    assert enc.values.shape[:2] == (3, 5)


def test_topk_ids_are_the_k_active_latents_and_k_is_capped() -> None:
    sae = random_sae("topk", "none", seed=4)
    x = torch.randn(9, D_IN, generator=torch.Generator().manual_seed(5))
    want_a, _ = reference.encode(sae, x.double().numpy())
    with torch.no_grad():
        enc = sae.encode_sparse(x, k=3 * K)  # more than the SAE's k: every other latent is 0
    assert enc.values.shape == (9, K)
    for t in range(9):
        active = set(np.flatnonzero(want_a[t]).tolist())
        got = {int(i) for i, v in zip(enc.indices[t], enc.values[t], strict=True) if v > 0}
        assert got == active


def test_no_tokens() -> None:
    sae = random_sae("topk", "none")
    enc = sae.encode_sparse(torch.zeros(0, D_IN), features=torch.tensor(FEATURES))
    assert enc.values.shape == (0, K) and enc.features is not None
    assert enc.features.shape == (0, len(FEATURES))


def _tied_topk_sae(seed: int) -> Sae:
    """A TopK SAE whose encoder repeats columns exactly and nearly (1 ulp-scale apart), so
    the asked features tie or nearly tie with the k-th largest latent."""
    sae = random_sae("topk", "none", seed=seed)
    with torch.no_grad():
        w, b = sae.W_enc, sae.b_enc
        for j in range(0, D_SAE // 2, 3):  # exact copies of feature columns
            w[:, D_SAE // 2 + j] = w[:, j]
            b[D_SAE // 2 + j] = b[j]
        for j in range(1, D_SAE // 2, 3):  # near copies
            w[:, D_SAE // 2 + j] = w[:, j] * (1 + 1e-7)
            b[D_SAE // 2 + j] = b[j]
    return sae


@pytest.mark.parametrize("seed", range(6))
def test_topk_features_alone_equal_the_full_encode(seed: int) -> None:
    """Steering's read (k=0: the asked features only, the encoder run only on tokens where
    one of them has a positive pre-activation) gives exactly what the full encode gives,
    on random and tied/near-tied encoders, in [rows, positions] batches and any block
    size; and the shortcut is really taken on some tokens (the test can fail both ways)."""
    sae = _tied_topk_sae(seed) if seed % 2 else random_sae("topk", "none", seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(4, 11, D_IN, generator=g)
    features = torch.randint(0, D_SAE, (2,), generator=g)
    features[0] = 0  # a feature with exact copies (tied encoders)
    with torch.no_grad():
        pre = sae.pre_activations(x)[..., features]
        for block_rows in (1, 3, 1000):  # the matmul's rounding depends on its rows
            block_bytes = block_rows * D_SAE * 4
            full = sae.encode_sparse(x, features=features, block_bytes=block_bytes).features
            got = sae.encode_sparse(x, k=0, features=features, block_bytes=block_bytes).features
            assert got is not None and full is not None
            torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)  # rounding: block shapes
    assert bool((pre <= 0).all(-1).any())  # some tokens skip the encoder
    assert bool((full > 0).any()) and bool(((pre > 0) & (full == 0)).any())  # and some rank


def test_steering_read_blocks_stay_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt's steering read never holds more pre-activations at once than its
    block budget: every [rows, latents] block the encoder makes fits in block_bytes."""
    sae = random_sae("topk", "none", seed=7)
    shapes: list[tuple[int, ...]] = []
    real = Sae._pre_columns

    def recording(self: Sae, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        out = real(self, x, lo, hi)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(Sae, "_pre_columns", recording)
    x = torch.randn(2000, D_IN, generator=torch.Generator().manual_seed(8)) + 1.0
    budget = 7 * D_SAE * 4 + 5  # 7 rows
    with torch.no_grad():
        enc = sae.encode_sparse(x, k=0, features=torch.tensor(FEATURES), block_bytes=budget)
    assert enc.features is not None and enc.features.shape == (2000, len(FEATURES))
    assert shapes and sum(s[0] for s in shapes) > 1000  # the full encoder did run
    # a block is at most the budget, or MATMUL_ROWS tokens by k latents when that is more
    floor = MATMUL_ROWS * (sae.cfg.k or 0) * 4
    assert max(s[0] * s[1] * 4 for s in shapes) <= max(budget, floor)
    assert max(s[0] for s in shapes) < 2000 and max(s[1] for s in shapes) < D_SAE


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize("block_rows", [1, 7, 1000])
def test_encode_active_is_every_nonzero_latent(activation: str, block_rows: int) -> None:
    sae = random_sae(activation, "layernorm")
    x = torch.randn(23, D_IN, generator=torch.Generator().manual_seed(2)) + 0.3
    want_a, _ = reference.encode(sae, x.double().numpy())  # [T, d_sae]
    with torch.no_grad():
        got = sae.encode_active(x, block_bytes=block_rows * D_SAE * 4)
    rows, feats = got.rows.numpy(), got.features.numpy()
    assert (np.diff(rows) >= 0).all()
    dense = np.zeros_like(want_a)
    dense[rows, feats] = got.values.numpy()
    assert len(set(zip(rows.tolist(), feats.tolist(), strict=True))) == len(rows)  # no repeats
    np.testing.assert_allclose(dense, want_a, rtol=1e-5, atol=1e-5)
    assert (got.values.numpy() > 0).all()
