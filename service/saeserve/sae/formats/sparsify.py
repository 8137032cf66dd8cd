"""EleutherAI sparsify hookpoint folders (``<hookpoint>/cfg.json`` + ``sae.safetensors``).

sparsify saves one folder per hookpoint, named by the module path it hooked (``layers.6``,
``h.6``, ``layers.6.mlp``). Its tensors are ``encoder.weight [n, d]``, ``encoder.bias [n]``,
``W_dec [n, d]`` and ``b_dec [d]``; it encodes ``ReLU(encoder(x - b_dec))`` and keeps the k
largest, which is our TopK (ReLU of the k largest pre-activations). ``num_latents`` of 0
means ``d_in * expansion_factor``; missing keys take sparsify's defaults (k=32,
expansion_factor=32). Transcoders, skip connections and GroupMax activations are refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from saeserve.errors import InvalidArgument
from saeserve.sae.base import Activation, SaeConfig
from saeserve.sae.formats.files import json_int, load_safetensors, read_json, require_tensor

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
DEFAULT_K = 32
DEFAULT_EXPANSION_FACTOR = 32

# a whole decoder layer's output is the residual stream after that layer
_RESIDUAL = re.compile(
    r"^(?:(?:base_model|model|transformer|gpt_neox|language_model)\.)*(?:layers|h|blocks)\.(\d+)$"
)


def portable_hook_point(hookpoint: str) -> str:
    """``layers.6`` / ``h.6`` / ``model.layers.6`` -> ``resid_post.6``; other paths unchanged."""
    m = _RESIDUAL.match(hookpoint)
    return f"resid_post.{m[1]}" if m is not None else hookpoint


def is_sparsify_folder(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def read_sparsify(folder: Path) -> tuple[SaeConfig, dict[str, tuple[str, Tensor]]]:
    """Config and tensors of one hookpoint folder; tensors map our name -> (origin, tensor)."""
    cfg_path = folder / CFG_FILE
    raw = read_json(cfg_path)
    if raw.get("transcode"):
        raise InvalidArgument(
            f"{cfg_path}: transcode=true (a transcoder, not an SAE) is not supported"
        )
    if raw.get("skip_connection"):
        raise InvalidArgument(f"{cfg_path}: skip_connection=true is not supported")
    if raw.get("activation", "topk") != "topk":
        raise InvalidArgument(
            f"{cfg_path}: activation {raw['activation']!r} is not supported; supported: topk"
        )

    d_in = json_int(raw, "d_in", cfg_path)
    num_latents = json_int(raw, "num_latents", cfg_path, 0) or d_in * json_int(
        raw, "expansion_factor", cfg_path, DEFAULT_EXPANSION_FACTOR
    )
    try:
        cfg = SaeConfig(
            d_in=d_in,
            d_sae=num_latents,
            activation=Activation.TOPK,
            k=json_int(raw, "k", cfg_path, DEFAULT_K),
            hook_point=portable_hook_point(folder.name),
            apply_b_dec_to_input=True,
            metadata={"format": "sparsify", "hookpoint": folder.name},
        )
    except InvalidArgument as e:
        raise InvalidArgument(f"{cfg_path}: {e}") from None

    weights_path = folder / WEIGHTS_FILE
    file = load_safetensors(weights_path)
    if "W_skip" in file:
        raise InvalidArgument(f"{weights_path}: W_skip (a skip connection) is not supported")

    def take(key: str) -> Tensor:
        return require_tensor(file, key, weights_path)

    encoder_weight = take("encoder.weight")  # [n, d]
    if encoder_weight.ndim != 2:
        raise InvalidArgument(
            f"{weights_path}: encoder.weight must be 2-D [num_latents, d_in], got shape {list(encoder_weight.shape)}"
        )
    return cfg, {
        "W_enc": (f"{weights_path}:encoder.weight.T", encoder_weight.T),
        "b_enc": (f"{weights_path}:encoder.bias", take("encoder.bias")),
        "W_dec": (f"{weights_path}:W_dec", take("W_dec")),
        "b_dec": (f"{weights_path}:b_dec", take("b_dec")),
    }
