"""load_model on tiny model folders: dtypes, eval/no-grad state, context limit, stop tokens,
the tokenizer, and NotFound / InvalidArgument messages for bad folders and arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from saeserve.errors import InvalidArgument, NotFound
from saeserve.model.hookpoints import HookKind, HookPoint, forward_until
from saeserve.model.loader import load_model
from saeserve.model.tiny import EOS_TOKEN, PAD_TOKEN
from tests.model.conftest import D_MODEL, N_LAYERS, TEXT


def test_load_float32(tiny_paths: dict[str, Path]) -> None:
    lm = load_model(tiny_paths["llama"], name="tiny")
    assert (lm.name, lm.path, lm.dtype, lm.device) == (
        "tiny",
        tiny_paths["llama"],
        torch.float32,
        torch.device("cpu"),
    )
    assert not lm.model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in lm.model.parameters())
    assert (lm.layout.family, lm.layout.n_layers, lm.layout.d_model) == ("llama", N_LAYERS, D_MODEL)
    assert lm.max_positions == 256
    vocab = json.loads((tiny_paths["llama"] / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in vocab}
    assert lm.eos_token_id == ids[EOS_TOKEN] and lm.stop_token_ids == (ids[EOS_TOKEN],)
    assert lm.pad_token_id == ids[PAD_TOKEN]
    assert lm.tokenizer.decode(lm.tokenizer(TEXT).input_ids) == TEXT
    # same numbers as HF loading the folder itself
    ref = AutoModelForCausalLM.from_pretrained(tiny_paths["llama"], local_files_only=True)
    ids_t = lm.tokenizer(TEXT, return_tensors="pt").input_ids
    torch.testing.assert_close(
        lm.model(input_ids=ids_t).logits, ref(input_ids=ids_t).logits, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("case_id", ["gpt2", "gemma2", "neox_par"])
def test_load_bfloat16(tiny_paths: dict[str, Path], case_id: str) -> None:
    lm32 = load_model(tiny_paths[case_id])
    lm16 = load_model(tiny_paths[case_id], dtype="bfloat16")
    assert lm16.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in lm16.model.parameters())
    ids = lm16.tokenizer(TEXT, return_tensors="pt").input_ids
    seen: list[torch.dtype] = []
    out16 = forward_until(
        lm16,
        {HookPoint(HookKind.RESID_MID, 1): lambda x: seen.append(x.dtype)},
        None,
        input_ids=ids,
    )
    assert seen == [torch.bfloat16]
    logits32 = lm32.model(input_ids=ids).logits
    err = (out16.logits.float() - logits32).abs().max() / logits32.abs().max()
    assert err < 0.05, f"bf16 logits differ from fp32 by {err:.3f} of their range"


def test_gemma2_uses_eager_attention(tiny_paths: dict[str, Path]) -> None:
    lm = load_model(tiny_paths["gemma2"])
    assert lm.attn_implementation == "eager" and lm.model.config._attn_implementation == "eager"
    assert lm.extra["final_logit_softcapping"] == 30.0
    with pytest.raises(
        InvalidArgument, match="attn_implementation: 'sdpa' is not supported by gemma2"
    ):
        load_model(tiny_paths["gemma2"], attn_implementation="sdpa")


def _copy_without(src: Path, dst: Path, pattern: str) -> Path:
    shutil.copytree(src, dst)
    for f in dst.glob(pattern):
        f.unlink()
    return dst


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("config.json", "has no config.json"),
        ("*.safetensors", r"has no \*\.safetensors"),
        ("tokenizer.json", "has no tokenizer.json"),
    ],
)
def test_missing_files_raise_not_found(
    tiny_paths: dict[str, Path], tmp_path: Path, missing: str, message: str
) -> None:
    folder = _copy_without(tiny_paths["gpt2"], tmp_path / "m", missing)
    with pytest.raises(NotFound, match=message):
        load_model(folder)


def test_bad_arguments(tiny_paths: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="is not a folder"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(
        InvalidArgument, match="dtype: 'float64' is not one of float32, bfloat16, float16"
    ):
        load_model(tiny_paths["gpt2"], dtype="float64")
    with pytest.raises(InvalidArgument, match="device: 'gpu0'"):
        load_model(tiny_paths["gpt2"], device="gpu0")
    with pytest.raises(InvalidArgument, match="attn_implementation: 'flash'"):
        load_model(tiny_paths["gpt2"], attn_implementation="flash")
    folder = _copy_without(tiny_paths["gpt2"], tmp_path / "opt", "config.json")
    (folder / "config.json").write_text(json.dumps({"model_type": "opt"}))
    with pytest.raises(
        InvalidArgument, match="model_type: 'opt' is not supported; supported: gemma, gemma2"
    ):
        load_model(folder)
