"""Fixtures for model tests: one tiny random model per supported family, built once per session.

Also holds the test-side reference table of where each HF family keeps its branches, written
from the HF modeling code independently of ``saeserve.model.architectures``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from saeserve.model.loader import LoadedModel, load_model
from saeserve.model.tiny import build_tiny_model

torch.set_num_threads(1)

N_LAYERS = 3
D_MODEL = 32
TEXT = "The quick brown fox jumps over the lazy dog by the sea."  # > 8 tokens: Gemma-2 window


@dataclass(frozen=True)
class Case:
    """One tiny model, and the HF module names the tests use as independent references."""

    family: str
    parallel_residual: bool
    blocks: str  # nn.ModuleList of blocks
    attn_delta: str  # child of a block whose output[0] the block adds after attention
    mlp_delta: str  # child of a block whose output the block adds after the MLP
    mid_reader: str | None  # child of a block whose input is resid_mid (None: parallel)
    final_norm: str


CASES: dict[str, Case] = {
    "gpt2": Case("gpt2", False, "transformer.h", "attn", "mlp", "ln_2", "transformer.ln_f"),
    "llama": Case("llama", False, "model.layers", "self_attn", "mlp", "post_attention_layernorm", "model.norm"),
    "mistral": Case("mistral", False, "model.layers", "self_attn", "mlp", "post_attention_layernorm", "model.norm"),
    "qwen2": Case("qwen2", False, "model.layers", "self_attn", "mlp", "post_attention_layernorm", "model.norm"),
    "gemma": Case("gemma", False, "model.layers", "self_attn", "mlp", "post_attention_layernorm", "model.norm"),
    "gemma2": Case("gemma2", False, "model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "pre_feedforward_layernorm", "model.norm"),
    "neox_seq": Case("gpt_neox", False, "gpt_neox.layers", "attention", "mlp", "post_attention_layernorm", "gpt_neox.final_layer_norm"),
    "neox_par": Case("gpt_neox", True, "gpt_neox.layers", "attention", "mlp", None, "gpt_neox.final_layer_norm"),
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Case id -> folder of a tiny random model (3 layers, d_model 32)."""
    return {
        case_id: build_tiny_model(
            case.family,
            tmp_path_factory.mktemp(case_id),
            n_layers=N_LAYERS,
            d_model=D_MODEL,
            parallel_residual=case.parallel_residual,
        )
        for case_id, case in CASES.items()
    }


@pytest.fixture(scope="session")
def loaded(tiny_paths: dict[str, Path]) -> dict[str, LoadedModel]:
    """Case id -> the tiny model loaded in float32."""
    return {case_id: load_model(path, name=case_id) for case_id, path in tiny_paths.items()}


@pytest.fixture(params=list(CASES))
def lm(request: pytest.FixtureRequest, loaded: dict[str, LoadedModel]) -> LoadedModel:
    return loaded[request.param]


@pytest.fixture
def case(lm: LoadedModel) -> Case:
    return CASES[lm.name]


@pytest.fixture
def input_ids(lm: LoadedModel) -> torch.Tensor:
    return lm.tokenizer(TEXT, return_tensors="pt").input_ids
