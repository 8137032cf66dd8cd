"""Load a Hugging Face causal LM and its tokenizer from a local folder, ready for hooks.

``load_model("/models/gpt2")`` reads ``config.json``, the ``*.safetensors`` weights and
``tokenizer.json`` (plus ``tokenizer_config.json`` when present) with no hub access, puts the
model in eval mode with gradients off, and returns a ``LoadedModel`` that carries the
tokenizer, the architecture layout, the context limit and the stop tokens. Attention is
``sdpa`` except for Gemma-2, whose logit soft-capping only the ``eager`` kernel implements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from saeserve.errors import InvalidArgument, NotFound
from saeserve.model.architectures import ArchitectureLayout, family_of, layout_for

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# Families whose HF attention is only exact with the eager kernel (Gemma-2 soft-capping).
_EAGER_ONLY = frozenset({"gemma2"})


@dataclass
class LoadedModel:
    """A causal LM ready for inference: eval mode, no gradients, on `device` in `dtype`."""

    name: str
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    layout: ArchitectureLayout
    device: torch.device
    dtype: torch.dtype
    max_positions: int
    """Longest sequence (prompt + generated tokens) the model's positions allow."""
    eos_token_id: int | None
    """The main end-of-text token (the first of `stop_token_ids`), or None."""
    stop_token_ids: tuple[int, ...] = ()
    """Every end-of-sequence id from config, generation_config and tokenizer."""
    pad_token_id: int = 0
    """Token id to fill padded positions with (the tokenizer's pad, else eos, else 0)."""
    attn_implementation: str = "sdpa"
    extra: dict[str, Any] = field(default_factory=dict)
    """Family-specific facts, e.g. ``final_logit_softcapping`` for Gemma-2."""

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding (may exceed len(tokenizer) when the vocab is padded)."""
        return int(self.layout.unembed_weight(self.model).shape[0])


def _require_files(folder: Path) -> None:
    if not folder.is_dir():
        raise NotFound(f"model path: {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise NotFound(f"model path: {str(folder)!r} has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise NotFound(f"model path: {str(folder)!r} has no *.safetensors weights")
    if not (folder / "tokenizer.json").is_file():
        raise NotFound(f"model path: {str(folder)!r} has no tokenizer.json")


def _ids(value: object) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def _stop_token_ids(folder: Path, config: Any, tokenizer: PreTrainedTokenizerFast) -> list[int]:
    ids: list[int] = []
    generation_config = folder / "generation_config.json"
    if generation_config.is_file():
        ids += _ids(json.loads(generation_config.read_text()).get("eos_token_id"))
    ids += _ids(getattr(config, "eos_token_id", None))
    ids += _ids(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))  # dedupe, keep order


def _max_positions(config: Any, tokenizer: PreTrainedTokenizerFast) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = tokenizer.model_max_length
    if isinstance(limit, int) and 0 < limit < 10**9:
        return limit
    raise InvalidArgument("model config: no max_position_embeddings or n_positions")


def resolve_device(device: str) -> torch.device:
    """The torch device ``device`` names; ``auto`` is CUDA when available, else the CPU.
    InvalidArgument for a name torch does not parse or CUDA that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InvalidArgument(f"device: {device!r} is not a torch device ({exc})") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(f"device: {device!r} requested but CUDA is not available")
    return parsed


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    name: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load the causal LM in folder `path` (no hub access) onto `device` in `dtype`.

    `device` may be ``auto`` (``resolve_device``); `dtype` is one of float32, bfloat16,
    float16. `attn_implementation` defaults to sdpa (eager for Gemma-2); either is exact
    with left-padding masks. NotFound if the folder or one of config.json /
    *.safetensors / tokenizer.json is missing; InvalidArgument for an unsupported family,
    dtype or device.
    """
    folder = Path(path).expanduser()
    if dtype not in DTYPES:
        raise InvalidArgument(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise InvalidArgument(
            f"attn_implementation: {attn_implementation!r} is not one of "
            f"{', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    torch_device = resolve_device(device)
    _require_files(folder)

    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model_type = str(getattr(config, "model_type", ""))
    family_of(model_type, field="model config.json model_type")
    if attn_implementation is None:
        attn_implementation = "eager" if model_type in _EAGER_ONLY else "sdpa"
    elif attn_implementation != "eager" and model_type in _EAGER_ONLY:
        raise InvalidArgument(
            f"attn_implementation: {attn_implementation!r} is not supported by {model_type}; "
            "use 'eager'"
        )

    model = AutoModelForCausalLM.from_pretrained(
        folder,
        config=config,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        dtype=DTYPES[dtype],
        attn_implementation=attn_implementation,
    )
    nn.Module.to(model, torch_device)  # PreTrainedModel.to is typed by a decorator mypy misreads
    model.eval()
    model.requires_grad_(False)

    tokenizer = _load_tokenizer(folder)
    stop_ids = _stop_token_ids(folder, config, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = stop_ids[0] if stop_ids else 0
        if tokenizer.pad_token is None and stop_ids:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(stop_ids[0])

    extra: dict[str, Any] = {}
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap is not None:
        extra["final_logit_softcapping"] = float(softcap)

    return LoadedModel(
        name=name or folder.name,
        path=folder,
        model=model,
        tokenizer=tokenizer,
        layout=layout_for(model),
        device=torch_device,
        dtype=DTYPES[dtype],
        max_positions=_max_positions(config, tokenizer),
        eos_token_id=stop_ids[0] if stop_ids else None,
        stop_token_ids=tuple(stop_ids),
        pad_token_id=int(pad_id),
        attn_implementation=attn_implementation,
        extra=extra,
    )


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    # The tokenizer.json is the source of truth; tokenizer_config.json adds special tokens and
    # the chat template. Loading the generic fast class avoids model-specific rewrites.
    return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)


@dataclass(frozen=True)
class LoadedTokenizer:
    """A model folder's tokenizer and context limit, without the weights."""

    tokenizer: PreTrainedTokenizerFast
    max_positions: int


def load_tokenizer(path: str | Path) -> LoadedTokenizer:
    """The tokenizer of the model in folder `path` and its context limit, as ``load_model``
    gives them, for processes that tokenize but never run the model (the gRPC ingress)."""
    folder = Path(path).expanduser()
    _require_files(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    tokenizer = _load_tokenizer(folder)
    return LoadedTokenizer(tokenizer, _max_positions(config, tokenizer))
