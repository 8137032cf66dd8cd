"""Where each supported model family keeps its blocks, branches, norms and embeddings.

An ``ArchitectureLayout`` names, for one Hugging Face causal-LM family, the module whose
output is exactly what a block adds to the residual stream after attention (``attn_out``)
and after the MLP (``mlp_out``), plus the block list, final norm, embedding and unembedding.
Hook points (``saeserve.model.hookpoints``) are built on these paths. Families:

- ``gpt2``: ``transformer.h[L]``, branches ``attn`` / ``mlp``, final norm ``transformer.ln_f``.
- ``llama`` (also ``mistral``, ``qwen2``, Gemma-1 ``gemma``): ``model.layers[L]``, branches
  ``self_attn`` / ``mlp``, final norm ``model.norm``.
- ``gemma2``: like llama, but each branch ends in its own RMSNorm, so the residual deltas are
  the outputs of ``post_attention_layernorm`` / ``post_feedforward_layernorm``.
- ``gpt_neox``: ``gpt_neox.layers[L]``, branches ``attention`` / ``mlp``, final norm
  ``gpt_neox.final_layer_norm``; ``parallel_residual`` when both branches read the block input.

The final norm's kind (``FINAL_NORM_OF_MODEL_TYPE``) is per model type, not per family:
GPT-2 and GPT-NeoX use a LayerNorm, Llama / Mistral / Qwen2 an RMSNorm scaled by its
weight, Gemma and Gemma-2 an RMSNorm scaled by ``1 + weight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from saeserve.errors import InvalidArgument


@dataclass(frozen=True)
class _FamilyPaths:
    """Module paths of one family; `blocks` is an nn.ModuleList, the others are per block."""

    blocks: str
    attn_out: str
    mlp_out: str
    final_norm: str


_PATHS: dict[str, _FamilyPaths] = {
    "gpt2": _FamilyPaths("transformer.h", "attn", "mlp", "transformer.ln_f"),
    "llama": _FamilyPaths("model.layers", "self_attn", "mlp", "model.norm"),
    "gemma2": _FamilyPaths(
        "model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "model.norm"
    ),
    "gpt_neox": _FamilyPaths("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"),
}

# HF `config.model_type` -> layout family.
FAMILY_OF_MODEL_TYPE: dict[str, str] = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma": "llama",
    "gemma2": "gemma2",
    "gpt_neox": "gpt_neox",
}


class NormKind(StrEnum):
    """How a norm maps x [..., d] (eps inside the square root; b only for LayerNorm)."""

    LAYERNORM = "layernorm"  # weight * (x - mean) / sqrt(var + eps) + bias
    RMSNORM = "rmsnorm"  # weight * x / sqrt(mean(x^2) + eps)
    RMSNORM_ONE_PLUS = "rmsnorm_one_plus"  # (1 + weight) * x / sqrt(mean(x^2) + eps): Gemma


# HF `config.model_type` -> kind of its final norm (read from the HF modeling code).
FINAL_NORM_OF_MODEL_TYPE: dict[str, NormKind] = {
    "gpt2": NormKind.LAYERNORM,
    "llama": NormKind.RMSNORM,
    "mistral": NormKind.RMSNORM,
    "qwen2": NormKind.RMSNORM,
    "gemma": NormKind.RMSNORM_ONE_PLUS,
    "gemma2": NormKind.RMSNORM_ONE_PLUS,
    "gpt_neox": NormKind.LAYERNORM,
}


@dataclass(frozen=True)
class NormDirectionMap:
    """What a norm does to a direction added to its input, less the token's 1/scale.

    ``apply(v) = gain * (v - mean(v) if centres else v)``: the norm's Jacobian at a token
    whose normalising scale is 1 and whose own (centred) vector is orthogonal to v.
    """

    gain: Tensor
    """[d] float32, the per-coordinate multiplier after normalising."""
    centres: bool
    """True for a LayerNorm: a constant shift of the input does not reach the output."""

    def apply(self, v: Tensor) -> Tensor:
        """The mapped directions [..., d] (float32) of v [..., d]."""
        v = v.float()
        if self.centres:
            v = v - v.mean(dim=-1, keepdim=True)
        return v * self.gain.to(v.device)


@dataclass(frozen=True)
class ArchitectureLayout:
    """The module layout of one loaded model; methods take the model they describe."""

    family: str
    n_layers: int
    d_model: int
    parallel_residual: bool = False
    model_type: str = ""

    @property
    def _paths(self) -> _FamilyPaths:
        return _PATHS[self.family]

    @property
    def blocks_path(self) -> str:
        """Module path of the nn.ModuleList of blocks, e.g. ``"model.layers"``."""
        return self._paths.blocks

    def block_path(self, layer: int) -> str:
        """Module path of block `layer`, e.g. ``"model.layers.3"``."""
        return f"{self._paths.blocks}.{layer}"

    def attn_out_path(self, layer: int) -> str:
        """Module path whose output is what block `layer` adds after attention."""
        return f"{self.block_path(layer)}.{self._paths.attn_out}"

    def mlp_out_path(self, layer: int) -> str:
        """Module path whose output is what block `layer` adds after the MLP."""
        return f"{self.block_path(layer)}.{self._paths.mlp_out}"

    @property
    def final_norm_path(self) -> str:
        """Module path of the norm between the last block and the unembedding."""
        return self._paths.final_norm

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The model's transformer blocks, in order."""
        blocks = model.get_submodule(self._paths.blocks)
        assert isinstance(blocks, nn.ModuleList)
        return blocks

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        """Block `layer` (0-based)."""
        self.check_layer(layer)
        return self.blocks(model)[layer]

    def attn_out_module(self, model: nn.Module, layer: int) -> nn.Module:
        """Module whose output (or output[0]) the block adds to the residual after attention."""
        self.check_layer(layer)
        return model.get_submodule(self.attn_out_path(layer))

    def mlp_out_module(self, model: nn.Module, layer: int) -> nn.Module:
        """Module whose output (or output[0]) the block adds to the residual after the MLP."""
        self.check_layer(layer)
        return model.get_submodule(self.mlp_out_path(layer))

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The norm applied to the last block's output before the unembedding."""
        return model.get_submodule(self._paths.final_norm)

    @property
    def final_norm_kind(self) -> NormKind:
        """The kind of the final norm (``FINAL_NORM_OF_MODEL_TYPE``)."""
        return FINAL_NORM_OF_MODEL_TYPE[self.model_type]

    def final_norm_direction_map(self, model: nn.Module) -> NormDirectionMap:
        """The linear map the final norm applies to a direction (see ``NormDirectionMap``)."""
        norm = self.final_norm(model)
        weight = getattr(norm, "weight", None)
        kind = self.final_norm_kind
        if weight is None:  # a norm without learned scale (elementwise_affine=False)
            gain = torch.ones(self.d_model)
        else:
            assert isinstance(weight, Tensor)
            gain = weight.detach().float()
            if kind is NormKind.RMSNORM_ONE_PLUS:
                gain = 1.0 + gain
        return NormDirectionMap(gain=gain, centres=kind is NormKind.LAYERNORM)

    def final_norm_scale(self, model: nn.Module, x: Tensor) -> Tensor:
        """[...] float32 sigma(x): what the final norm divides x [..., d] by, its eps
        included (a LayerNorm's std, an RMSNorm's root mean square); the per-token factor
        ``NormDirectionMap`` leaves out."""
        norm = self.final_norm(model)
        # nn.LayerNorm and Gemma's RMSNorm call it eps, Llama's variance_epsilon
        eps: Any = getattr(norm, "eps", None)
        eps = float(getattr(norm, "variance_epsilon", 0.0) if eps is None else eps)
        x = x.float()
        if self.final_norm_kind is NormKind.LAYERNORM:
            return (x.var(dim=-1, unbiased=False) + eps).sqrt()
        return (x.pow(2).mean(dim=-1) + eps).sqrt()

    def embed(self, model: nn.Module) -> nn.Module:
        """The token embedding (Gemma: includes the sqrt(d_model) scale in its forward)."""
        assert isinstance(model, PreTrainedModel)
        return model.get_input_embeddings()

    def unembed_weight(self, model: nn.Module) -> Tensor:
        """The unembedding matrix W_U, [vocab, d_model] (logits = final_norm(x) @ W_U.T).

        Gemma-2 then soft-caps logits (``config.final_logit_softcapping``); not included here.
        """
        assert isinstance(model, PreTrainedModel)
        head = model.get_output_embeddings()
        assert isinstance(head, nn.Module)
        weight = head.weight
        assert isinstance(weight, Tensor)
        return weight

    def check_layer(self, layer: int, field: str = "layer") -> None:
        """Raise InvalidArgument unless 0 <= layer < n_layers."""
        if not 0 <= layer < self.n_layers:
            raise InvalidArgument(
                f"{field}: {layer} is out of range; the model has {self.n_layers} layers "
                f"(0..{self.n_layers - 1})"
            )


def family_of(model_type: str, *, field: str) -> str:
    """The supported family of a config's ``model_type``; InvalidArgument naming ``field``
    and the supported types otherwise."""
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        supported = ", ".join(sorted(FAMILY_OF_MODEL_TYPE))
        raise InvalidArgument(f"{field}: {model_type!r} is not supported; supported: {supported}")
    return family


def layout_for(model: PreTrainedModel) -> ArchitectureLayout:
    """The layout of `model`, a causal LM of a supported family; InvalidArgument otherwise."""
    config = model.config
    model_type = str(getattr(config, "model_type", ""))
    family = family_of(model_type, field="model.config.model_type")
    layout = ArchitectureLayout(
        family=family,
        n_layers=int(config.num_hidden_layers),
        d_model=int(config.hidden_size),
        parallel_residual=bool(getattr(config, "use_parallel_residual", False))
        and family == "gpt_neox",
        model_type=model_type,
    )
    try:
        n_blocks = len(layout.blocks(model))
    except AttributeError as exc:
        raise InvalidArgument(
            f"model: a {model_type} model without {layout.blocks_path}; load it as a causal LM"
        ) from exc
    if n_blocks != layout.n_layers:
        raise InvalidArgument(
            f"model: {layout.blocks_path} has {n_blocks} blocks, config says {layout.n_layers}"
        )
    return layout
