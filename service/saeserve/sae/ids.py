"""The id an SAE gets from its path when none is given: readable, and unique within a release.

Used by ``load_sae`` and by the server's settings (``SaeSpec.effective_id``), so an SAE
has the same id whichever way it is loaded. Imports nothing heavy: the settings import it.

- A Gemma Scope SAE (``.../layer_<L>/width_<W>/<l0>/params.npz``, the file or its folder;
  ``embedding`` for ``layer_<L>``) is ``layer_<L>/width_<W>/<l0>``, SAELens's ``sae_id``
  for it; the folder name alone (``average_l0_82``) repeats in every layer and width.
- An OpenAI-style ``<L>.pt`` is ``<release>/<L>``, the release being the folder above
  ``autoencoders/`` (``resid_post_mlp_v5_32k/8``) or else the file's own folder; the
  layer number alone repeats in every location and width.
- Any other file is its name without suffix; a folder (SAELens, sparsify) its name.

So ids may contain "/" (never at either end); the API takes them as opaque strings.
"""

from __future__ import annotations

import re
from pathlib import Path

_GEMMASCOPE_PARAMS = "params.npz"
_LAYER = re.compile(r"^(layer_\d+|embedding)$")
_WIDTH = re.compile(r"^width_\w+$")
_OPENAI_FOLDER = "autoencoders"
_FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".npz")
"""Suffixes dropped from a single-file SAE's name; folders keep theirs (``blocks.8.hook_resid_pre``)."""


def default_sae_id(path: Path) -> str:
    """The default id of the SAE at ``path`` (a file or a folder); see the module docstring."""
    if path.name == _GEMMASCOPE_PARAMS:
        path = path.parent
    is_file = path.suffix in _FILE_SUFFIXES
    name = path.stem if is_file else path.name
    width, layer = path.parent, path.parent.parent
    if _WIDTH.match(width.name) and _LAYER.match(layer.name):
        return f"{layer.name}/{width.name}/{name}"
    if is_file and name.isdigit():  # <L>.pt: one layer of a release
        release = path.parent.parent if path.parent.name == _OPENAI_FOLDER else path.parent
        return f"{release.name}/{name}" if release.name else name
    return name
