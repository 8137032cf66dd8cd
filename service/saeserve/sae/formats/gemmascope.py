"""Gemma Scope ``params.npz`` files (JumpReLU SAEs on Gemma 2).

The archive holds ``W_enc [d, n]``, ``W_dec [n, d]``, ``b_enc [n]``, ``b_dec [d]`` and
``threshold [n]`` (some copies spell the weights ``w_enc``/``w_dec``). Gemma Scope
encodes ``pre = x @ W_enc + b_enc`` with no ``b_dec`` subtraction and keeps
``ReLU(pre)`` where ``pre > threshold``, so it maps onto our ``Sae`` with
``apply_b_dec_to_input=False``. The archive is read with ``allow_pickle=False``.

The hook point comes from the published layout
``gemma-scope-<model>-<res|mlp>[-canonical]/layer_<L>/width_<W>/<l0>/params.npz``:
``res`` -> ``resid_post.L``, ``mlp`` -> ``mlp_out.L``; attention SAEs (``att``, which read
the per-head ``z``) and embedding SAEs get no hook point and need one given. Transcoder
releases are refused (they read one point and write another).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from saeserve.errors import InvalidArgument
from saeserve.sae.base import Activation, SaeConfig

PARAMS_FILE = "params.npz"
_RELEASE = re.compile(r"^gemma-scope-.*-(res|mlp|att)(?:-|$)")
_LAYER = re.compile(r"^layer_(\d+)$")
_SITE = {"res": "resid_post", "mlp": "mlp_out"}


def read_gemmascope(
    file: Path, *, layer: int | None = None
) -> tuple[SaeConfig, dict[str, tuple[str, Tensor]]]:
    """Config and tensors of one params.npz; tensors map our name -> (origin, tensor)."""
    for part in file.parts:
        if part.startswith("gemma-scope") and "transcoder" in part:
            raise InvalidArgument(
                f"{file}: Gemma Scope transcoders ({part}) are not SAEs; not supported"
            )
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as e:  # not a zip, object arrays (need pickle), truncated, ...
        raise InvalidArgument(f"{file}: cannot read npz without pickle ({e})") from None

    def take(key: str) -> tuple[str, Tensor]:
        for name in (key, key.replace("W_", "w_")):
            if name in arrays:
                return f"{file}:{name}", torch.from_numpy(arrays[name])
        raise InvalidArgument(f"{file}: missing array {key!r}; found {sorted(arrays)}")

    w_enc = take("W_enc")
    if w_enc[1].ndim != 2:
        raise InvalidArgument(
            f"{file}: W_enc must be 2-D [d_in, d_sae], got shape {list(w_enc[1].shape)}"
        )
    d_in, d_sae = w_enc[1].shape
    try:
        cfg = SaeConfig(
            d_in=d_in,
            d_sae=d_sae,
            activation=Activation.JUMPRELU,
            hook_point=hook_point_from_path(file, layer),
            apply_b_dec_to_input=False,
            metadata={"format": "gemmascope"},
        )
    except InvalidArgument as e:
        raise InvalidArgument(f"{file}: {e}") from None
    return cfg, {
        "W_enc": w_enc,
        "b_enc": take("b_enc"),
        "W_dec": take("W_dec"),
        "b_dec": take("b_dec"),
        "threshold": take("threshold"),
    }


def hook_point_from_path(file: Path, layer: int | None) -> str:
    """Portable hook point from ``gemma-scope-*-<site>/layer_<L>/...`` ("" where it has none).

    With no release folder in the path, an explicit ``layer`` means ``resid_post.<layer>``.
    """
    index, release, site = layer, None, None
    for part in file.parts:
        if part == "embedding":
            return ""
        if index is None and (m := _LAYER.match(part)) is not None:
            index = int(m[1])
        if (m := _RELEASE.match(part)) is not None:
            release, site = m[1], _SITE.get(m[1])
    if release is None:
        return f"resid_post.{layer}" if layer is not None else ""
    return f"{site}.{index}" if site is not None and index is not None else ""
