"""SAELens folders (``cfg.json`` + ``sae_weights.safetensors``): read them, and write ours.

SAELens is also the native write format: ``write_saelens`` saves ``W_enc [d_in, d_sae]``,
``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec`` (and ``threshold`` for JumpReLU) with a
``cfg.json`` (pre-6.0 flat keys: ``architecture``, ``k``, ``hook_name``,
``normalize_activations``, ...) that SAELens itself loads and encodes as saeserve does.
Fields SAELens has no key for (the exact portable hook point, ``input_norm``,
``metadata``) go in a ``"saeserve"`` object inside the same ``cfg.json``, so that
write -> read gives back an equal config and bit-identical tensors; except that a
dataset input scale (``input_norm=scale``), which SAELens ignores when it loads a
folder, is folded into ``W_enc``, ``W_dec`` and ``b_dec``: read back, that SAE takes
unscaled input and gives the same latents up to float rounding.

Reading accepts SAELens 3.x-6.x configs: ``k`` at the top level or under
``activation_fn_kwargs``, ``hook_name`` at the top level, under ``metadata``/``meta``, or
as the old ``hook_point`` key; ``log_threshold`` (exp'd) for ``threshold``; a non-trivial
``scaling_factor`` tensor is folded into ``W_dec``; a TopK SAE's
``rescale_acts_by_decoder_norm`` (SAELens 6's training default) is folded into ``W_enc``
and ``b_enc``, leaving unit-norm decoder rows.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from saeserve.errors import InvalidArgument
from saeserve.sae.base import Activation, InputNorm, Sae, SaeConfig
from saeserve.sae.formats.files import json_int, load_safetensors, read_json, require_tensor

log = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
OWN_KEY = "saeserve"  # our fields inside cfg.json

_ARCHITECTURE = {
    Activation.TOPK: "topk",
    Activation.JUMPRELU: "jumprelu",
    Activation.RELU: "standard",
}
_NORMALIZE = {InputNorm.NONE: "none", InputNorm.LAYERNORM: "layer_norm"}  # a scale is folded
_PORTABLE = re.compile(r"^(resid_pre|resid_mid|resid_post|attn_out|mlp_out)\.(\d+)$")


def read_saelens(
    folder: Path, *, layer: int | None = None
) -> tuple[SaeConfig, dict[str, tuple[str, Tensor]]]:
    """Config and tensors of a SAELens folder; tensors map our name -> (origin, tensor).

    ``layer`` only matters when cfg.json names no hook: it then means ``resid_post.<layer>``.
    """
    cfg_path = folder / CFG_FILE
    raw = read_json(cfg_path)
    meta = raw.get("metadata") or raw.get("meta") or {}
    meta = meta if isinstance(meta, dict) else {}
    own = raw.get(OWN_KEY) or {}
    if not isinstance(own, dict):
        raise InvalidArgument(f"{cfg_path}: {OWN_KEY!r} must be an object, got {own!r}")

    activation = _activation(raw, cfg_path)
    k = _k(raw, cfg_path) if activation is Activation.TOPK else None
    input_norm, norm_scale = _input_norm(raw, own, cfg_path)
    if head := raw.get("hook_head_index") or meta.get("hook_head_index"):
        raise InvalidArgument(f"{cfg_path}: hook_head_index={head!r} is not supported")
    # A field of SAELens's TopK config only; in other configs' metadata it records how a
    # BatchTopK SAE was trained, and SAELens folds the norms before saving those.
    rescale = activation is Activation.TOPK and bool(raw.get("rescale_acts_by_decoder_norm"))

    hook_name = raw.get("hook_name") or meta.get("hook_name") or raw.get("hook_point") or ""
    if not hook_name and layer is not None:
        hook_name = f"resid_post.{layer}"
    model = raw.get("model_name") or meta.get("model_name") or ""
    if OWN_KEY in raw:
        metadata = own.get("metadata", {})
    else:
        metadata = {"format": "saelens"}
        version = raw.get("sae_lens_version") or meta.get("sae_lens_version")
        if version:
            metadata["sae_lens_version"] = version
        if input_norm is InputNorm.NONE and raw.get("normalize_activations") in (
            True,
            "expected_average_only_in",
        ):
            metadata["note"] = (
                "normalize_activations expected_average_only_in without norm_scaling_factor: input used unscaled, as SAELens does"
            )
            log.warning("%s: %s", cfg_path, metadata["note"])
    try:
        cfg = SaeConfig(
            d_in=json_int(raw, "d_in", cfg_path),
            d_sae=json_int(raw, "d_sae", cfg_path),
            activation=activation,
            k=k,
            hook_point=str(own.get("hook_point", hook_name)),
            model=str(model),
            input_norm=input_norm,
            norm_scale=norm_scale,
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
            metadata=metadata,
        )
    except InvalidArgument as e:
        raise InvalidArgument(f"{cfg_path}: {e}") from None

    weights_path = folder / WEIGHTS_FILE
    file = load_safetensors(weights_path)
    tensors: dict[str, tuple[str, Tensor]] = {}
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        tensors[name] = (f"{weights_path}:{name}", require_tensor(file, name, weights_path))
    if activation is Activation.JUMPRELU:
        if "threshold" in file:
            tensors["threshold"] = (f"{weights_path}:threshold", file["threshold"])
        elif "log_threshold" in file:
            tensors["threshold"] = (
                f"{weights_path}:exp(log_threshold)",
                file["log_threshold"].exp(),
            )
        else:
            require_tensor(file, "threshold", weights_path)
    scaling = file.get("scaling_factor", file.get("finetuning_scaling_factor"))
    if scaling is not None and not torch.all(scaling == 1):
        # SAELens multiplies the latents by it before decoding; fold it into W_dec's rows
        origin, w_dec = tensors["W_dec"]
        if scaling.shape != (w_dec.shape[0],):
            raise InvalidArgument(
                f"{weights_path}: scaling_factor has shape {list(scaling.shape)}; expected [{w_dec.shape[0]}] (W_dec rows)"
            )
        tensors["W_dec"] = (f"{origin} * scaling_factor", w_dec * scaling[:, None])
    if rescale:
        _fold_decoder_norms(tensors, cfg)
    return cfg, tensors


def write_saelens(sae: Sae, folder: Path) -> Path:
    """Save ``sae`` as a SAELens folder (cfg.json + sae_weights.safetensors); returns it."""
    cfg = sae.cfg
    try:
        json.dumps(cfg.metadata)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"sae.cfg.metadata: must be JSON-serialisable ({e})") from None
    folder.mkdir(parents=True, exist_ok=True)

    names = ["W_enc", "b_enc", "W_dec", "b_dec"]
    if cfg.activation is Activation.JUMPRELU:
        names.append("threshold")
    tensors = {n: getattr(sae, n).detach().to("cpu").contiguous() for n in names}
    dtype = str(sae.W_enc.dtype).removeprefix("torch.")
    input_norm = cfg.input_norm
    if input_norm is InputNorm.SCALE:
        # SAELens loads a folder without its norm_scaling_factor: the scale goes into the weights
        tensors.update(_fold_input_scale(tensors, cfg.norm_scale))
        input_norm = InputNorm.NONE

    out = saelens_cfg(cfg, dtype, input_norm)

    # write beside, then rename, so a reader never sees half a file
    weights_tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    cfg_tmp = folder / f".{CFG_FILE}.tmp"
    cfg_tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(weights_tmp, folder / WEIGHTS_FILE)
    os.replace(cfg_tmp, folder / CFG_FILE)
    return folder


def saelens_cfg(cfg: SaeConfig, dtype: str, input_norm: InputNorm) -> dict[str, Any]:
    """The ``cfg.json`` contents for ``cfg`` with weights of ``dtype`` ("float32", ...).

    ``input_norm`` is the norm the written weights expect (a dataset scale is folded away).
    """
    out: dict[str, Any] = {
        "architecture": _ARCHITECTURE[cfg.activation],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": _NORMALIZE[input_norm],
        "reshape_activations": "none",
        "hook_name": saelens_hook_name(cfg.hook_point),
        "hook_head_index": None,
        "model_name": cfg.model,
    }
    if (m := _PORTABLE.match(cfg.hook_point)) is not None:
        out["hook_layer"] = int(m[2])
    if cfg.activation is Activation.TOPK:
        out["k"] = cfg.k
        out["activation_fn_kwargs"] = {"k": cfg.k}
    own: dict[str, Any] = {"hook_point": cfg.hook_point, "input_norm": str(input_norm)}
    if input_norm is not cfg.input_norm:
        own["folded_norm_scale"] = cfg.norm_scale  # for people reading the file; never read
    out[OWN_KEY] = own | {"metadata": cfg.metadata}
    return out


def _fold_decoder_norms(tensors: dict[str, tuple[str, Tensor]], cfg: SaeConfig) -> None:
    """Plain TopK weights for SAELens's ``rescale_acts_by_decoder_norm`` (in place).

    With that option SAELens 6 (saes/topk_sae.py) ranks and returns ``pre * |W_dec[i]|``
    and decodes ``(a / |W_dec[i]|) @ W_dec``: the same as ``W_enc`` and ``b_enc`` times
    the row norms with unit-norm decoder rows (its own ``fold_W_dec_norm``). Done in float64; a zero row
    stays zero and its latent's pre-activation is 0, as in SAELens.
    """
    (enc_origin, w_enc), (bias_origin, b_enc), (dec_origin, w_dec) = (
        tensors[n] for n in ("W_enc", "b_enc", "W_dec")
    )
    if (w_enc.shape, b_enc.shape, w_dec.shape) != (
        (cfg.d_in, cfg.d_sae),
        (cfg.d_sae,),
        (cfg.d_sae, cfg.d_in),
    ):
        return  # build_sae names the tensor whose shape is wrong
    norms = w_dec.double().norm(dim=-1)  # [d_sae]
    tensors["W_enc"] = (f"{enc_origin} * |W_dec|", (w_enc.double() * norms).to(w_enc.dtype))
    tensors["b_enc"] = (f"{bias_origin} * |W_dec|", (b_enc.double() * norms).to(b_enc.dtype))
    unit = w_dec.double() / norms.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    tensors["W_dec"] = (f"{dec_origin} / |W_dec|", unit.to(w_dec.dtype))


def _fold_input_scale(tensors: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """``W_enc``, ``W_dec`` and ``b_dec`` of the same SAE taking unscaled input.

    ``((x * s) - b_dec) @ W_enc = (x - b_dec / s) @ (s * W_enc)``, and decoding divides by
    s, so ``b_enc`` (and a JumpReLU threshold) stay; SAELens's
    ``fold_activation_norm_scaling_factor`` does the same. Done in float64.
    """
    w_enc, w_dec, b_dec = tensors["W_enc"], tensors["W_dec"], tensors["b_dec"]
    return {
        "W_enc": (w_enc.double() * scale).to(w_enc.dtype),
        "W_dec": (w_dec.double() / scale).to(w_dec.dtype),
        "b_dec": (b_dec.double() / scale).to(b_dec.dtype),
    }


def saelens_hook_name(hook_point: str) -> str:
    """SAELens (TransformerLens) name of a portable hook point; other names unchanged."""
    m = _PORTABLE.match(hook_point)
    return f"blocks.{m[2]}.hook_{m[1]}" if m is not None else hook_point


# --- cfg.json fields ----------------------------------------------------------------------
def _activation(raw: dict[str, Any], cfg_path: Path) -> Activation:
    architecture = raw.get("architecture", "standard")
    activation_fn = raw.get("activation_fn") or raw.get("activation_fn_str") or "relu"
    if architecture == "topk":
        return Activation.TOPK
    if architecture == "jumprelu":
        return Activation.JUMPRELU
    if architecture == "standard":
        if activation_fn == "topk":  # SAELens < 6 wrote TopK SAEs this way
            return Activation.TOPK
        if activation_fn == "relu":
            return Activation.RELU
        raise InvalidArgument(
            f"{cfg_path}: activation_fn {activation_fn!r} is not supported; supported: relu, topk"
        )
    raise InvalidArgument(
        f"{cfg_path}: architecture {architecture!r} is not supported; supported: standard (ReLU), topk, jumprelu"
    )


def _k(raw: dict[str, Any], cfg_path: Path) -> int:
    kwargs = raw.get("activation_fn_kwargs") or {}
    k = raw.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if not isinstance(k, int) or isinstance(k, bool):
        raise InvalidArgument(
            f"{cfg_path}: TopK SAE needs an integer k (or activation_fn_kwargs.k), got {k!r}"
        )
    return k


def _input_norm(
    raw: dict[str, Any], own: dict[str, Any], cfg_path: Path
) -> tuple[InputNorm, float]:
    value = raw.get("normalize_activations", "none")
    factor = raw.get("norm_scaling_factor")
    if value in (None, False, "none"):
        norm = InputNorm.NONE
    elif value == "layer_norm":
        norm = InputNorm.LAYERNORM
    elif value in (True, "expected_average_only_in"):
        norm = InputNorm.SCALE if factor is not None else InputNorm.NONE
    else:
        raise InvalidArgument(
            f"{cfg_path}: normalize_activations {value!r} is not supported; supported: none, layer_norm, expected_average_only_in"
        )
    scale = float(own.get("norm_scale", factor if factor is not None else 1.0))
    if "input_norm" in own and own["input_norm"] != str(norm):
        raise InvalidArgument(
            f"{cfg_path}: {OWN_KEY}.input_norm {own['input_norm']!r} disagrees with normalize_activations {value!r}"
        )
    if norm is InputNorm.SCALE and not scale > 0:
        raise InvalidArgument(f"{cfg_path}: norm_scaling_factor must be > 0, got {scale}")
    return norm, scale
