"""Load any supported SAE file layout into a ``Sae``, and write the native (SAELens) one.

``load_sae(path)`` looks at the files to tell the format apart (DESIGN.md, "SAE formats
read"): a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``), an EleutherAI
sparsify hookpoint folder (``cfg.json`` + ``sae.safetensors``), an OpenAI
sparse_autoencoder ``.pt`` state dict, or a Gemma Scope ``params.npz`` (the file or its
folder). A sparsify run folder holding several hookpoint folders, or an OpenAI
``autoencoders/`` folder of ``<L>.pt`` files, is narrowed down with ``layer``. Each
reader in this package maps its layout onto our tensors; this module checks every
tensor's shape against the config, then builds the ``Sae`` on the requested device and
dtype. Nothing is unpickled beyond ``torch.load(weights_only=True)``.

safetensors files are memory-mapped and a tensor already on its device in its dtype is
kept as it is: the weights are the file's pages (no copy, no resident memory until
read; ``saeserve.sae.residency``). Asking for another dtype or device copies them, which
is logged with the bytes it costs.

    sae = load_sae("saes/gpt2-res-jb/blocks.6.hook_resid_post", device="cuda")
    write_sae(sae, "out/my-sae")   # cfg.json + sae_weights.safetensors
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from saeserve.errors import InvalidArgument, NotFound
from saeserve.sae.base import Sae, SaeConfig
from saeserve.sae.formats import gemmascope, openai, saelens, sparsify
from saeserve.sae.ids import default_sae_id

__all__ = [
    "SAE_DTYPES",
    "SaeFormat",
    "detect_format",
    "load_sae",
    "parse_dtype",
    "read_sae",
    "write_sae",
]

log = logging.getLogger(__name__)

SAE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The weight dtypes an SAE may be served in, by name (``SaeSpec.dtype``)."""


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (a key of ``SAE_DTYPES``); InvalidArgument else."""
    if name not in SAE_DTYPES:
        raise InvalidArgument(f"dtype: must be one of {sorted(SAE_DTYPES)}, got {name!r}")
    return SAE_DTYPES[name]


class SaeFormat(StrEnum):
    SAELENS = "saelens"
    SPARSIFY = "sparsify"
    OPENAI = "openai"
    GEMMASCOPE = "gemmascope"


class Detected(NamedTuple):
    format: SaeFormat
    path: Path
    """The SAELens/sparsify folder, or the OpenAI .pt / Gemma Scope params.npz file."""


EXPECTED = (
    f"{saelens.CFG_FILE} + {saelens.WEIGHTS_FILE} (SAELens), "
    f"{sparsify.CFG_FILE} + {sparsify.WEIGHTS_FILE} (sparsify hookpoint folder), "
    f"a {'/'.join(openai.SUFFIXES)} state dict (OpenAI sparse_autoencoder), "
    f"{gemmascope.PARAMS_FILE} (Gemma Scope)"
)


def load_sae(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    sae_id: str | None = None,
    hook_point: str | None = None,
    layer: int | None = None,
) -> Sae:
    """Read the SAE at ``path`` in whichever supported layout it is.

    ``dtype`` (a torch dtype or a name in ``SAE_DTYPES``) defaults to the file's own,
    which keeps the weights memory-mapped; ``sae_id`` to ``default_sae_id`` of the SAE's file
    or folder (its name, or more of its path where names repeat, as Gemma Scope's and
    OpenAI's do). ``hook_point`` replaces whatever the files say (OpenAI and Gemma Scope
    files record none; it is then inferred from the published folder names, or is
    ``resid_post.<layer>`` when ``layer`` is given, or left empty). ``layer`` also picks
    the hookpoint folder of a sparsify run, or ``<layer>.pt`` in an OpenAI folder.
    """
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    if dtype is not None and not dtype.is_floating_point:
        raise InvalidArgument(f"dtype: must be a floating point dtype, got {dtype}")
    cfg, tensors = read_sae(path, sae_id=sae_id, hook_point=hook_point, layer=layer)
    return build_sae(cfg, tensors, device=device, dtype=dtype)


def read_sae(
    path: str | Path,
    *,
    sae_id: str | None = None,
    hook_point: str | None = None,
    layer: int | None = None,
) -> tuple[SaeConfig, dict[str, tuple[str, Tensor]]]:
    """The config and our-orientation tensors (name -> (origin, tensor)) of the SAE at
    ``path``, as ``load_sae`` reads them (same arguments), before ``build_sae``: safetensors
    stay memory-mapped, so a shard (``saeserve.engine.sae_shards``) that slices its latents
    out touches only their pages."""
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise InvalidArgument(f"layer: must be an integer >= 0, got {layer!r}")
    found = detect_format(Path(path), layer=layer)
    if found.format is SaeFormat.SAELENS:
        cfg, tensors = saelens.read_saelens(found.path, layer=layer)
    elif found.format is SaeFormat.SPARSIFY:
        cfg, tensors = sparsify.read_sparsify(found.path)
    elif found.format is SaeFormat.OPENAI:
        cfg, tensors = openai.read_openai(found.path, layer=layer)
    else:
        cfg, tensors = gemmascope.read_gemmascope(found.path, layer=layer)
    if hook_point:
        cfg.hook_point = hook_point
    cfg.id = sae_id or default_sae_id(found.path)
    return cfg, tensors


def write_sae(sae: Sae, folder: str | Path) -> Path:
    """Save ``sae`` in the native layout (SAELens: cfg.json + sae_weights.safetensors).

    Reading the folder back gives an equal config (the id is the folder name) and
    bit-identical tensors.
    """
    return saelens.write_saelens(sae, Path(folder))


def detect_format(path: Path, *, layer: int | None = None) -> Detected:
    """Which layout ``path`` holds; NotFound if it does not exist, else InvalidArgument."""
    if not path.exists():
        raise NotFound(f"SAE path {str(path)!r}: no such file or folder")
    if path.is_file():
        if path.suffix in openai.SUFFIXES:
            return Detected(SaeFormat.OPENAI, path)
        if path.name.endswith(".npz"):
            return Detected(SaeFormat.GEMMASCOPE, path)
        if path.name in (saelens.CFG_FILE, saelens.WEIGHTS_FILE, sparsify.WEIGHTS_FILE):
            return detect_format(path.parent, layer=layer)
        raise InvalidArgument(f"SAE path {str(path)!r}: unknown file type; expected {EXPECTED}")

    if (path / saelens.CFG_FILE).is_file() and (path / saelens.WEIGHTS_FILE).is_file():
        return Detected(SaeFormat.SAELENS, path)
    if sparsify.is_sparsify_folder(path):
        return Detected(SaeFormat.SPARSIFY, path)
    if (path / gemmascope.PARAMS_FILE).is_file():
        return Detected(SaeFormat.GEMMASCOPE, path / gemmascope.PARAMS_FILE)

    hookpoints = sorted(p for p in path.iterdir() if p.is_dir() and sparsify.is_sparsify_folder(p))
    state_dicts = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in openai.SUFFIXES)
    if layer is not None:
        wanted = f"resid_post.{layer}"
        matches = [p for p in hookpoints if sparsify.portable_hook_point(p.name) == wanted]
        matches += [p for p in state_dicts if p.stem == str(layer)]
        if len(matches) == 1:
            return detect_format(matches[0])
    if hookpoints or state_dicts:
        names = [p.name for p in hookpoints + state_dicts]
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        which = f"none matches layer={layer}" if layer is not None else "pass layer= or one of them"
        raise InvalidArgument(f"SAE path {str(path)!r} holds {len(names)} SAEs ({shown}); {which}")
    found = sorted(p.name for p in path.iterdir())
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "") if found else "nothing"
    raise InvalidArgument(
        f"SAE path {str(path)!r}: no known SAE layout; expected {EXPECTED}; found {shown}"
    )


_SHAPES = {
    "W_enc": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_in"),
    "b_dec": ("d_in",),
    "threshold": ("d_sae",),
}


def build_sae(
    cfg: SaeConfig,
    tensors: dict[str, tuple[str, Tensor]],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Sae:
    """A ``Sae`` from our-orientation tensors (name -> (origin, tensor)), shapes checked.

    ``threshold`` may be absent (zeros) except for JumpReLU SAEs, whose readers supply it.
    """
    dims = {"d_in": cfg.d_in, "d_sae": cfg.d_sae}
    for name, (origin, tensor) in tensors.items():
        expected = [dims[d] for d in _SHAPES[name]]
        if list(tensor.shape) != expected:
            axes = ", ".join(_SHAPES[name])
            raise InvalidArgument(
                f"{origin} ({name}) has shape {list(tensor.shape)}; expected [{axes}] = {expected}"
                f" (d_in={cfg.d_in}, d_sae={cfg.d_sae})"
            )
        if not tensor.is_floating_point():
            raise InvalidArgument(f"{origin} ({name}): dtype {tensor.dtype} is not floating point")
    target = dtype or tensors["W_enc"][1].dtype
    with torch.device("meta"):  # no throwaway [d_in, d_sae] allocations
        sae = Sae(cfg, dtype=target)
    copied = 0
    for name in _SHAPES:
        tensor = tensors[name][1] if name in tensors else torch.zeros(cfg.d_sae, dtype=target)
        kept = tensor.to(device=device, dtype=target).contiguous()  # itself when it matches
        if kept.data_ptr() != tensor.data_ptr():
            copied += kept.nbytes
        setattr(sae, name, nn.Parameter(kept))
    if copied > 1 << 20:
        source = tensors["W_enc"][1]
        log.info(
            "SAE %s: weights converted from %s on %s to %s on %s: a %.1f MiB copy "
            "(matching the file's dtype keeps them memory-mapped, uncopied)",
            cfg.id,
            str(source.dtype).removeprefix("torch."),
            source.device,
            str(target).removeprefix("torch."),
            torch.device(device),
            copied / 2**20,
        )
    return sae
