"""Independent references for engine tests: raw torch hooks on HF modules, numpy SAE math.

Nothing here uses saeserve's hook points or SAE code paths; module paths are written out
per family so a bug in the engine cannot hide in the reference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from saeserve.sae.base import Activation, InputNorm, Sae

_PATHS = {
    "gpt2": ("transformer.h", "attn", "mlp"),
    "llama": ("model.layers", "self_attn", "mlp"),
}


def capture(model: nn.Module, family: str, ids: list[int]) -> dict[str, np.ndarray]:
    """Activations [seq, d] of one unpadded text at every portable point, by raw hooks."""
    blocks_path, attn_name, mlp_name = _PATHS[family]
    blocks = model.get_submodule(blocks_path)
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str):
        def hook(_m, _inp, out):
            acts[name] = (out[0] if isinstance(out, tuple) else out)[0].detach().clone()

        return hook

    for i, block in enumerate(blocks):
        handles.append(getattr(block, attn_name).register_forward_hook(keep(f"attn_out.{i}")))
        handles.append(getattr(block, mlp_name).register_forward_hook(keep(f"mlp_out.{i}")))
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    result = {k: v.float().numpy() for k, v in acts.items()}
    hs = [h[0].float().numpy() for h in out.hidden_states]
    for i in range(len(blocks)):
        result[f"resid_pre.{i}"] = hs[i]
        result[f"resid_mid.{i}"] = hs[i] + result[f"attn_out.{i}"]
        if i + 1 < len(blocks):
            result[f"resid_post.{i}"] = hs[i + 1]
    return result


def _normalized(sae: Sae, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x in SAE space, the per-token mean to add back, model units per SAE unit)."""
    cfg = sae.cfg
    x = x.astype(np.float64)
    mean, scale = np.zeros((len(x), 1)), np.ones((len(x), 1))
    if cfg.input_norm is InputNorm.LAYERNORM:
        mean = x.mean(-1, keepdims=True)
        std = (x - mean).std(-1, ddof=1, keepdims=True)
        return (x - mean) / (std + 1e-5), mean, std
    if cfg.input_norm is InputNorm.SCALE:
        return x * cfg.norm_scale, mean, np.full((len(x), 1), 1 / cfg.norm_scale)
    return x, mean, scale


def pre_activations(sae: Sae, x: np.ndarray) -> np.ndarray:
    """Encoder pre-activations [T, d_sae] by the formula, in float64 numpy."""
    p = {k: v.detach().double().numpy() for k, v in sae.state_dict().items()}
    xn, _, _ = _normalized(sae, x)
    return (xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"]


def encode(sae: Sae, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latents [T, d_sae], reconstruction [T, d_in]) by the formulas, in float64 numpy."""
    p = {k: v.detach().double().numpy() for k, v in sae.state_dict().items()}
    cfg = sae.cfg
    _, mean, scale = _normalized(sae, x)
    pre = pre_activations(sae, x)
    if cfg.activation is Activation.TOPK:
        a = np.zeros_like(pre)
        top = np.argsort(-pre, axis=-1)[:, : cfg.k]
        rows = np.arange(len(pre))[:, None]
        a[rows, top] = np.maximum(pre[rows, top], 0)
    elif cfg.activation is Activation.JUMPRELU:
        a = np.maximum(pre, 0) * (pre > p["threshold"])
    else:
        a = np.maximum(pre, 0)
    recon = (a @ p["W_dec"] + p["b_dec"]) * scale + (
        mean if cfg.input_norm is InputNorm.LAYERNORM else 0
    )
    return a, recon


def norm_scale(sae: Sae, x: np.ndarray) -> np.ndarray:
    """[T, 1] model-space units per SAE-space unit."""
    if sae.cfg.input_norm is InputNorm.LAYERNORM:
        return (x - x.mean(-1, keepdims=True)).std(-1, ddof=1, keepdims=True)
    if sae.cfg.input_norm is InputNorm.SCALE:
        return np.full((len(x), 1), 1 / sae.cfg.norm_scale)
    return np.ones((len(x), 1))
