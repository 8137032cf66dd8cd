"""Tiny models: deterministic bytes per seed, the config each family asked for, a small
byte-level BPE vocabulary with end-of-text and pad tokens, and fast to build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from saeserve.errors import InvalidArgument
from saeserve.model.tiny import EOS_TOKEN, PAD_TOKEN, build_tiny_model, build_tokenizer


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    start = time.perf_counter()
    a = build_tiny_model("llama", tmp_path / "a", seed=3)
    elapsed = time.perf_counter() - start
    b = build_tiny_model("llama", tmp_path / "b", seed=3)
    c = build_tiny_model("llama", tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert elapsed < 5.0, f"building a tiny model took {elapsed:.2f} s"


@pytest.mark.parametrize(
    ("family", "kwargs", "expected"),
    [
        ("gpt2", {}, {"model_type": "gpt2", "n_layer": 2, "n_embd": 32}),
        (
            "qwen2",
            {"n_layers": 3, "d_model": 64},
            {"model_type": "qwen2", "num_hidden_layers": 3, "hidden_size": 64},
        ),
        (
            "gpt_neox",
            {"parallel_residual": False},
            {"model_type": "gpt_neox", "use_parallel_residual": False},
        ),
        ("gemma2", {"intermediate_size": 48}, {"model_type": "gemma2", "intermediate_size": 48}),
    ],
)
def test_config_has_requested_shape(
    tmp_path: Path, family: str, kwargs: dict[str, object], expected: dict[str, object]
) -> None:
    config = json.loads((build_tiny_model(family, tmp_path, **kwargs) / "config.json").read_text())  # type: ignore[arg-type]
    assert {k: config[k] for k in expected} == expected


def test_tokenizer_is_small_byte_level_and_round_trips(tmp_path: Path) -> None:
    path = build_tiny_model("gpt2", tmp_path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert 300 <= tok.get_vocab_size() <= 500
    assert (tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)) == (0, 1)
    text = "Zebras ünïcode 123 — never seen in training!"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: nothing is unknown
    assert tok.to_str() == build_tokenizer().to_str()
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert (cfg["eos_token"], cfg["pad_token"]) == (EOS_TOKEN, PAD_TOKEN)


def test_unknown_family_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="family: 'bert' is not one of gpt2, llama"):
        build_tiny_model("bert", tmp_path)
