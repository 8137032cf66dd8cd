"""Reading the JSON configs and safetensors files SAE formats ship, with errors that name the file.

Shared by the SAELens and sparsify readers; every failure is an InvalidArgument whose
message starts with the offending path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from saeserve.errors import InvalidArgument


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def json_int(raw: dict[str, Any], key: str, cfg_path: Path, default: int | None = None) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{cfg_path}: {key} must be an integer, got {value!r}")
    return value


def load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InvalidArgument(f"{path}: cannot read safetensors ({e})") from None


def require_tensor(file: dict[str, Tensor], key: str, path: Path) -> Tensor:
    if key not in file:
        raise InvalidArgument(f"{path}: missing tensor {key!r}; found {sorted(file)}")
    return file[key]
