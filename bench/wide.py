"""The wide bench SAE: a random 1,048,576-latent TopK SAE for the realistic profile's model.

Users serve 1M-latent SAEs (Gemma Scope's width-1m, the large GPT-2 SAEs), so the bench
measures one: k 32 at resid_post.6 of the GPT-2-small-shaped model (``bench.realistic``),
decoder rows unit-norm random, the encoder their transpose, as ``random_topk_sae`` builds
the 32k one. Its float32 weights are 6 GiB, so it is written straight into a memory-mapped
safetensors file in blocks of latents (each block seeded on its own), never held whole in
memory; built once into the realistic cache folder and reused. ``python -m bench.wide``
builds it and prints where.

Loading it maps 6 GiB: on a shared machine run what uses it under ``flock /work/wide.lock``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from bench.realistic import GPT2_SMALL, build
from saeserve.sae.base import Activation, InputNorm, SaeConfig
from saeserve.sae.formats.saelens import CFG_FILE, WEIGHTS_FILE, saelens_cfg

WIDE_D_SAE = 2**20
BLOCK_LATENTS = 2**16  # 192 MiB of decoder rows per block at d_model 768


def wide_sae(d_sae: int = WIDE_D_SAE, seed: int = 0) -> Path:
    """The folder of a random ``d_sae``-latent TopK SAE for the realistic model, cached."""
    s = GPT2_SMALL
    model_path, _ = build(s)
    folder = model_path.parent / "saes" / f"wide-{d_sae}-k{s.k}-seed{seed}"
    if (folder / CFG_FILE).is_file():
        return folder
    cfg = SaeConfig(
        d_in=s.d_model,
        d_sae=d_sae,
        k=s.k,
        hook_point=f"resid_post.{s.sae_layer}",
        id=folder.name,
        activation=Activation.TOPK,
    )
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_weights(tmp / WEIGHTS_FILE, s.d_model, d_sae, seed)
    cfg_json = saelens_cfg(cfg, "float32", InputNorm.NONE)
    (tmp / CFG_FILE).write_text(json.dumps(cfg_json, indent=2) + "\n")
    os.replace(tmp, folder)
    return folder


def _write_weights(path: Path, d_in: int, d_sae: int, seed: int) -> None:
    """safetensors with W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, float32."""
    shapes = {"W_enc": [d_in, d_sae], "b_enc": [d_sae], "W_dec": [d_sae, d_in], "b_dec": [d_in]}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    start = 8 + len(raw)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(start + offset)

    def view(name: str) -> np.memmap:
        lo, _ = header[name]["data_offsets"]  # type: ignore[index]
        shape = tuple(shapes[name])
        return np.memmap(path, np.float32, "r+", offset=start + lo, shape=shape)

    w_enc, b_enc, w_dec = view("W_enc"), view("b_enc"), view("W_dec")
    for lo in range(0, d_sae, BLOCK_LATENTS):
        hi = min(lo + BLOCK_LATENTS, d_sae)
        g = torch.Generator().manual_seed(seed * 1_000_003 + lo)
        rows = torch.randn(hi - lo, d_in, generator=g)
        rows /= rows.norm(dim=-1, keepdim=True)
        w_dec[lo:hi] = rows.numpy()
        w_enc[:, lo:hi] = rows.T.numpy()
        b_enc[lo:hi] = (0.01 * torch.randn(hi - lo, generator=g)).numpy()
    view("b_dec")[:] = 0.0
    for m in (w_enc, b_enc, w_dec):
        m.flush()


if __name__ == "__main__":
    print(f"wide SAE: {wide_sae()}")
