"""Layouts per family: the block count and widths, the embedding, and W_U reproducing HF's
logits from the final norm's output (with Gemma-2's soft cap applied by hand)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from transformers import OPTConfig, OPTForCausalLM

from saeserve.errors import InvalidArgument
from saeserve.model.architectures import layout_for
from saeserve.model.loader import LoadedModel
from tests.model.conftest import D_MODEL, N_LAYERS, Case

FAMILY = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "llama", "gemma2": "gemma2", "gpt_neox": "gpt_neox"}  # fmt: skip


def test_layout_fields(lm: LoadedModel, case: Case) -> None:
    layout = lm.layout
    assert layout == layout_for(lm.model)
    assert (layout.family, layout.model_type) == (FAMILY[case.family], case.family)
    assert (layout.n_layers, layout.d_model, layout.parallel_residual) == (
        N_LAYERS,
        D_MODEL,
        case.parallel_residual,
    )
    assert layout.blocks(lm.model) is lm.model.get_submodule(case.blocks)
    assert layout.final_norm(lm.model) is lm.model.get_submodule(case.final_norm)
    assert layout.attn_out_module(lm.model, 2) is lm.model.get_submodule(
        f"{case.blocks}.2.{case.attn_delta}"
    )
    assert layout.mlp_out_module(lm.model, 0) is lm.model.get_submodule(
        f"{case.blocks}.0.{case.mlp_delta}"
    )
    with pytest.raises(
        InvalidArgument, match=r"layer: 3 is out of range; the model has 3 layers \(0\.\.2\)"
    ):
        layout.attn_out_module(lm.model, 3)


def test_unembedding_reproduces_hf_logits(lm: LoadedModel, input_ids: Tensor) -> None:
    out = lm.model(input_ids=input_ids, output_hidden_states=True)
    w_u = lm.layout.unembed_weight(lm.model)
    assert w_u.shape == (lm.vocab_size, D_MODEL) and lm.vocab_size == len(lm.tokenizer)
    logits = out.hidden_states[-1] @ w_u.T  # HF's last hidden state is after the final norm
    cap = lm.model.config.get_text_config().__dict__.get("final_logit_softcapping")
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)


def test_embedding_output_is_block_0_input_for_rotary_models(
    lm: LoadedModel, input_ids: Tensor
) -> None:
    hidden0 = lm.model(input_ids=input_ids, output_hidden_states=True).hidden_states[0]
    embedded = lm.layout.embed(lm.model)(input_ids)
    if lm.layout.family == "gpt2":  # plus learned position embeddings
        embedded = embedded + lm.model.transformer.wpe(torch.arange(input_ids.shape[1]))
    torch.testing.assert_close(embedded, hidden0, rtol=0, atol=0)


def test_unsupported_family_is_invalid_argument() -> None:
    config = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16)  # fmt: skip
    with pytest.raises(
        InvalidArgument, match="model_type: 'opt' is not supported; supported: gemma, gemma2, gpt2"
    ):
        layout_for(OPTForCausalLM(config))
