"""OpenAI sparse_autoencoder state dicts: one ``<layer>.pt`` file per layer.

The file holds ``encoder.weight [n, d]``, ``latent_bias [n]``, ``pre_bias [d]``,
``decoder.weight [d, n]``, ``activation`` ("TopK" or "ReLU") and, for TopK,
``activation_state_dict {"k", "postact_fn"}``; statistics buffers are ignored. The repo
encodes ``act(encoder(x' - pre_bias) + latent_bias)`` and decodes
``decoder(a) + pre_bias``; its TopK SAEs (and only those) LayerNorm the input,
``x' = (x - mean) / (std + 1e-5)``, and undo it on decode. That is our ``Sae`` with
``W_enc = encoder.weight.T``, ``b_enc = latent_bias``, ``W_dec = decoder.weight.T``,
``b_dec = pre_bias``. Files load with ``torch.load(weights_only=True)`` only: anything
needing more of pickle than tensors and plain containers is refused.

The hook point comes from the published layout ``<location>_v5_32k/autoencoders/<L>.pt``:
``resid_post_mlp`` -> ``resid_post.L``, ``resid_post_attn`` -> ``resid_mid.L``,
``resid_delta_attn`` -> ``attn_out.L``, ``resid_delta_mlp`` -> ``mlp_out.L``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeserve.errors import InvalidArgument
from saeserve.sae.base import Activation, InputNorm, SaeConfig

SUFFIXES = (".pt", ".pth")
LOCATIONS = {
    "resid_post_mlp": "resid_post",
    "resid_post_attn": "resid_mid",
    "resid_delta_attn": "attn_out",
    "resid_delta_mlp": "mlp_out",
}


def read_openai(
    file: Path, *, layer: int | None = None
) -> tuple[SaeConfig, dict[str, tuple[str, Tensor]]]:
    """Config and tensors of one state-dict file; tensors map our name -> (origin, tensor)."""
    state = _load_state_dict(file)

    def take(key: str) -> Tensor:
        value = state.get(key)
        if not isinstance(value, Tensor):
            raise InvalidArgument(f"{file}: missing tensor {key!r}; found {sorted(state)}")
        return value

    encoder_weight = take("encoder.weight")  # [n, d]
    if encoder_weight.ndim != 2:
        raise InvalidArgument(
            f"{file}: encoder.weight must be 2-D [n_latents, d_in], got shape {list(encoder_weight.shape)}"
        )
    n_latents, d_in = encoder_weight.shape
    activation, k = _activation(state, file)
    try:
        cfg = SaeConfig(
            d_in=d_in,
            d_sae=n_latents,
            activation=activation,
            k=k,
            hook_point=hook_point_from_path(file, layer),
            input_norm=InputNorm.LAYERNORM if activation is Activation.TOPK else InputNorm.NONE,
            apply_b_dec_to_input=True,
            metadata={"format": "openai"},
        )
    except InvalidArgument as e:
        raise InvalidArgument(f"{file}: {e}") from None
    return cfg, {
        "W_enc": (f"{file}:encoder.weight.T", encoder_weight.T),
        "b_enc": (f"{file}:latent_bias", take("latent_bias")),
        "W_dec": (f"{file}:decoder.weight.T", take("decoder.weight").T),
        "b_dec": (f"{file}:pre_bias", take("pre_bias")),
    }


def hook_point_from_path(file: Path, layer: int | None) -> str:
    """Portable hook point from ``<location>_<version>/.../<L>.pt`` ("" where it has none).

    With no location folder in the path, an explicit ``layer`` means ``resid_post.<layer>``.
    """
    index = layer if layer is not None else (int(file.stem) if file.stem.isdigit() else None)
    for folder in file.parents:
        for location in (*LOCATIONS, "mlp_post_act"):
            if folder.name == location or folder.name.startswith(location + "_"):
                point = LOCATIONS.get(location)  # mlp_post_act has no portable name
                return f"{point}.{index}" if point is not None and index is not None else ""
    return f"resid_post.{layer}" if layer is not None else ""


def _activation(state: dict[str, Any], file: Path) -> tuple[Activation, int | None]:
    name = state.get("activation", "ReLU")
    if name == "ReLU":
        return Activation.RELU, None
    if name != "TopK":
        raise InvalidArgument(
            f"{file}: activation {name!r} is not supported; supported: TopK, ReLU"
        )
    params = state.get("activation_state_dict")
    if not isinstance(params, dict):
        raise InvalidArgument(
            f"{file}: TopK SAE needs activation_state_dict with k, got {params!r}"
        )
    k = params.get("k")
    if not isinstance(k, int) or isinstance(k, bool):
        raise InvalidArgument(f"{file}: activation_state_dict.k must be an integer, got {k!r}")
    postact = params.get("postact_fn", "ReLU")
    if postact != "ReLU":
        raise InvalidArgument(
            f"{file}: activation_state_dict.postact_fn {postact!r} is not supported; supported: ReLU"
        )
    return Activation.TOPK, k


def _load_state_dict(file: Path) -> dict[str, Any]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidArgument(
            f"{file}: refused: it needs unpickling beyond tensors and plain containers "
            f"(torch.load weights_only=True: {reason})"
        ) from None
    except Exception as e:  # not a torch file, truncated, ...
        raise InvalidArgument(f"{file}: cannot read a torch state dict ({e})") from None
    if not isinstance(state, dict):
        raise InvalidArgument(f"{file}: expected a state dict, got {type(state).__name__}")
    return state
