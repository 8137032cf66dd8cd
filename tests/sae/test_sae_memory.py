"""SAE weights in memory: dtypes (float32, bfloat16, float16) with float32 arithmetic,
zero-copy loads, encode blocks sized by a budget, and residency (``mincore``, pre-touch,
mlock). Run: ``pytest tests/sae/test_sae_memory.py -q``.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch

from saeserve.errors import InvalidArgument
from saeserve.sae import residency
from saeserve.sae.base import Encoding, Sae, SaeConfig
from saeserve.sae.formats import load_sae, write_sae
from saeserve.sae.formats.saelens import WEIGHTS_FILE

D_IN, D_SAE, K = 64, 4096, 32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def random_sae(dtype: torch.dtype = torch.float32, d_sae: int = D_SAE) -> Sae:
    sae = Sae(SaeConfig(d_in=D_IN, d_sae=d_sae, k=K, hook_point="resid_post.0"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae.to(dtype)


def inputs(n: int = 64) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(1))


def float32_reference(sae: Sae, x: torch.Tensor) -> torch.return_types.topk:
    """Top k of the pre-activations by a plain float32 matmul of the same weights upcast."""
    w_enc, b_enc, b_dec = (t.detach().float() for t in (sae.W_enc, sae.b_enc, sae.b_dec))
    pre = (x.float() - b_dec) @ w_enc + b_enc  # [n, d_sae] float32
    return torch.topk(pre, K, dim=-1)


def mapped_files(address: int) -> list[str]:
    """Paths of the mappings of this process (``/proc/self/maps``) that hold ``address``."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            if lo <= address < hi:
                out.append(fields[5] if len(fields) > 5 else "")
    return out


# --- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_each_dtype_loads_and_picks_the_float32_top_k(tmp_path: Path, name: str) -> None:
    folder = write_sae(random_sae(), tmp_path / "sae")
    sae = load_sae(folder, dtype=name)
    assert all(p.dtype is DTYPES[name] for p in sae.parameters())
    x = inputs()
    want = float32_reference(sae, x)  # from the same (rounded) weights, upcast
    with torch.no_grad():
        enc = sae.encode_sparse(x, reconstruct=True)
    assert enc.values.dtype is torch.float32
    assert torch.equal(enc.indices, want.indices)
    torch.testing.assert_close(enc.values, torch.relu(want.values), rtol=1e-5, atol=1e-5)
    # the reconstruction sums the k decoder rows in float32 too
    w_dec = sae.W_dec.detach().float()
    recon = (enc.values.unsqueeze(-1) * w_dec[enc.indices]).sum(1) + sae.b_dec.detach().float()
    assert enc.reconstruction is not None and enc.reconstruction.dtype is torch.float32
    torch.testing.assert_close(enc.reconstruction, recon, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_matmul_would_pick_other_latents(dtype: torch.dtype) -> None:
    """Why the encoder widens: torch's CPU matmul of 16-bit matrices rounds its output
    to 16 bits, and at this width that changes which latents are the top k."""
    sae = random_sae(dtype)
    x = inputs()
    want = float32_reference(sae, x).indices
    x16 = (x.to(dtype) - sae.b_dec.detach()).to(dtype)
    naive = torch.addmm(sae.b_enc.detach(), x16, sae.W_enc.detach())
    assert naive.dtype is dtype
    assert not torch.equal(torch.topk(naive.float(), K, dim=-1).indices, want)
    with torch.no_grad():
        assert torch.equal(sae.encode_sparse(x).indices, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_dense_saes_decode_and_feature_columns_in_float32(dtype: torch.dtype) -> None:
    sae = random_sae(dtype)
    sae.cfg.activation = sae.cfg.activation.RELU
    sae.cfg.k = None
    x = inputs(8)
    w_enc, b_enc, w_dec, b_dec = (
        t.detach().float() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    )
    a = torch.relu((x - b_dec) @ w_enc + b_enc)
    feats = torch.tensor([3, 100, 4000])
    with torch.no_grad():
        only = sae.encode_sparse(x, k=0, features=feats)  # the encoder columns alone
        full = sae.encode_sparse(x, k=5, reconstruct=True)
    assert only.features is not None and full.reconstruction is not None
    torch.testing.assert_close(only.features, a[:, feats], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.reconstruction, a @ w_dec + b_dec, rtol=1e-4, atol=1e-4)


def test_unknown_dtype_names_the_field(tmp_path: Path) -> None:
    folder = write_sae(random_sae(), tmp_path / "sae")
    with pytest.raises(InvalidArgument, match=r"dtype: must be one of .*float64"):
        load_sae(folder, dtype="float64")


# --- zero-copy ---------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_the_files_dtype_loads_memory_mapped_without_a_copy(
    tmp_path: Path, stored: torch.dtype, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_sae(random_sae(stored, d_sae=16384), tmp_path / "sae")
    weights = str((folder / WEIGHTS_FILE).resolve())
    with caplog.at_level(logging.INFO):
        for dtype in (None, str(stored).removeprefix("torch.")):
            sae = load_sae(folder, dtype=dtype)
            assert sae.W_enc.dtype is stored
            for p in (sae.W_enc, sae.W_dec, sae.b_enc):
                assert mapped_files(p.data_ptr()) == [weights]
    assert "copy" not in caplog.text


def test_another_dtype_is_a_logged_copy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_sae(random_sae(d_sae=16384), tmp_path / "sae")
    weights = str((folder / WEIGHTS_FILE).resolve())
    with caplog.at_level(logging.INFO):
        sae = load_sae(folder, dtype="bfloat16")
    assert weights not in mapped_files(sae.W_enc.data_ptr())
    assert "converted from float32 on cpu to bfloat16" in caplog.text
    converted = 2 * (2 * D_IN * 16384 + 16384 + D_IN)  # W_enc, W_dec, b_enc, b_dec in bf16
    assert f"{converted / 2**20:.1f} MiB copy" in caplog.text


# --- encode blocks -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_follow_the_budget(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """Every block's pre-activations fit the budget: rows while a block at full width has
    enough of them, then columns; the latents are those of one unbounded block."""
    sae = random_sae(dtype)
    x = inputs(50)
    seen: list[tuple[int, int]] = []  # [rows, latents] of each slice of pre-activations
    pre_columns = Sae._pre_columns

    def recording(self: Sae, xb: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        seen.append((len(xb), hi - lo))
        return pre_columns(self, xb, lo, hi)

    monkeypatch.setattr(Sae, "_pre_columns", recording)
    feats = torch.tensor([1, 2, 4095])

    def encode(budget: int) -> Encoding:
        seen.clear()
        sae.encode_block_bytes = budget
        with torch.no_grad():
            return sae.encode_sparse(x, features=feats, reconstruct=True, count_fires=True)

    whole = encode(64 << 20)
    assert seen == [(50, D_SAE)]
    row_blocks = encode(20 * D_SAE * 4)  # 20 rows at full width: fewer than the 50 tokens
    assert seen == [(50, 20 * D_SAE // 50)] * 2 + [(50, D_SAE - 2 * (20 * D_SAE // 50))]
    with monkeypatch.context() as m:
        m.setattr("saeserve.sae.base.MATMUL_ROWS", 16)  # full-width blocks are enough
        by_rows = encode(20 * D_SAE * 4)
        assert seen == [(20, D_SAE), (20, D_SAE), (10, D_SAE)]
    tiny = encode(1)  # never fewer than k latents of one block of rows
    assert set(seen) == {(50, K)}
    for got in (row_blocks, by_rows, tiny):
        assert torch.equal(got.indices, whole.indices)
        assert got.fire_counts is not None and whole.fire_counts is not None
        assert torch.equal(got.fire_counts, whole.fire_counts)
        for name in ("values", "features", "reconstruction"):  # matmuls of other shapes
            torch.testing.assert_close(getattr(got, name), getattr(whole, name))


def test_block_shape_at_a_million_latents() -> None:
    with torch.device("meta"):
        sae = Sae(SaeConfig(d_in=768, d_sae=2**20, k=32))
    assert sae.block_shape(1) == (16, 2**20)  # one decode token: full width, 4 MiB
    assert sae.block_shape(16) == (16, 2**20)
    assert sae.block_shape(256) == (256, 2**16)  # 64 MiB of [256, 65536] float32
    assert sae.block_shape(5000) == (512, 2**15)
    assert sae.block_shape(5000, 4 << 30) == (1024, 2**20)


def test_dense_blocks_budget_three_tensors() -> None:
    sae = random_sae()
    sae.cfg.activation = sae.cfg.activation.RELU
    sae.cfg.k = None
    sae.encode_block_bytes = 30 * D_SAE * 4
    assert sae.block_shape(100) == (10, D_SAE)
    assert sae.block_shape(100, 1) == (1, D_SAE)  # never fewer than one token a block


# --- residency -----------------------------------------------------------------------------


def _evicted(folder: Path) -> None:
    """Drop the weights file's pages from the page cache (clean and unmapped: advisory)."""
    fd = os.open(folder / WEIGHTS_FILE, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_pretouch_makes_the_weights_resident(tmp_path: Path) -> None:
    folder = write_sae(random_sae(d_sae=131072), tmp_path / "sae")  # 64 MiB of weights
    _evicted(folder)
    sae = load_sae(folder)  # safetensors' load reads ahead some 16 MiB of each tensor
    before = residency.resident_fraction(sae)
    if before == 1.0:
        pytest.skip(f"the page cache kept the file ({before:.0%} resident): nothing to show")
    residency.make_resident(sae, "pretouch")
    assert residency.resident_fraction(sae) == 1.0


def test_mlock_refused_falls_back_to_pretouch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_sae(random_sae(d_sae=131072), tmp_path / "sae")
    _evicted(folder)
    sae = load_sae(folder)
    monkeypatch.setattr(residency, "mlock_range", lambda start, length: errno.EPERM)
    with caplog.at_level(logging.WARNING):
        assert residency.lock(sae) is False
    assert "mlock of" in caplog.text and "RLIMIT_MEMLOCK" in caplog.text
    assert residency.resident_fraction(sae) == 1.0


def test_resident_fraction_counts_pages_of_anonymous_memory() -> None:
    sae = random_sae()  # ordinary tensors, written to: every page resident
    assert residency.resident_fraction(sae) == 1.0
    assert sae.weight_bytes() == 4 * (2 * D_IN * D_SAE + 2 * D_SAE + D_IN)
