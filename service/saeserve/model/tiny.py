"""Tiny random Hugging Face causal LMs written to disk, for tests and benchmarks.

``build_tiny_model("llama", tmp_path / "llama")`` writes a complete model folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) that
``saeserve.model.load_model`` loads exactly like a real checkpoint. Weights are random but
deterministic for a given seed; the tokenizer is a byte-level BPE trained on the short English
text below, with ``<|endoftext|>`` as end-of-text and ``<|pad|>`` as padding token. Building one
takes well under a second on a laptop CPU; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.utils import logging as hf_logging

from saeserve.errors import InvalidArgument

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TINY_VOCAB_SIZE = 400
TINY_MAX_POSITIONS = 256
TINY_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "gemma2", "gpt_neox")

# A tiny chat template, so chat-message code paths can run against tiny models.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + EOS_TOKEN + "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A sparse autoencoder reads the residual stream of a
language model and writes it back as a short list of features, each one a direction that people
can name: a feature for French text, a feature for numbers, a feature for the word "the".

Once upon a time there was a small town by the sea. Every morning the fishermen went out in their
boats, and every evening they came home with baskets of fish. The children ran along the beach,
the dogs barked at the waves, and the old lighthouse keeper counted the ships as they passed.

It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of
foolishness. Numbers like 1, 2, 3, 42 and 2024 appear in text too, as do questions: What is the
capital of France? Paris is the capital of France. How many legs does a spider have? Eight.

Steering a model means turning a feature up or down while the model writes. If we add the Golden
Gate Bridge feature, the model talks about bridges, fog and San Francisco; if we remove it, the
model forgets the bridge. Good tests check every number against an independent reference.
"""


def build_tokenizer() -> Tokenizer:
    """Train the byte-level BPE tokenizer on TRAINING_TEXT (deterministic, ~10 ms)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT.split("\n\n"), trainer=trainer)
    return tokenizer


def _config(
    family: str, vocab_size: int, n_layers: int, d_model: int, parallel_residual: bool
) -> dict[str, Any]:
    """Config kwargs for one family; 4 heads everywhere, GQA where the family has it."""
    n_heads = 4
    common: dict[str, Any] = {"vocab_size": vocab_size, "initializer_range": 0.1}
    if family == "gpt2":
        return common | {
            "n_embd": d_model,
            "n_layer": n_layers,
            "n_head": n_heads,
            "n_positions": TINY_MAX_POSITIONS,
        }
    rope_common = common | {
        "hidden_size": d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "max_position_embeddings": TINY_MAX_POSITIONS,
        "tie_word_embeddings": False,
    }
    if family in ("llama", "mistral", "qwen2"):
        return rope_common | {"intermediate_size": 2 * d_model, "num_key_value_heads": 2}
    if family == "gemma":
        return rope_common | {
            "intermediate_size": 2 * d_model,
            "num_key_value_heads": 2,
            "head_dim": d_model // n_heads,
            "tie_word_embeddings": True,
        }
    if family == "gemma2":
        head_dim = d_model // n_heads
        return rope_common | {
            "intermediate_size": 2 * d_model,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": 8,  # short, so tests of > 8 tokens exercise the local layers
            "layer_types": [
                "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
            ],
            "tie_word_embeddings": True,
        }
    if family == "gpt_neox":
        return rope_common | {
            "intermediate_size": 2 * d_model,
            "use_parallel_residual": parallel_residual,
        }
    raise InvalidArgument(f"family: {family!r} is not one of {', '.join(TINY_FAMILIES)}")


def tiny_config(
    family: str,
    *,
    vocab_size: int,
    n_layers: int = 2,
    d_model: int = 32,
    parallel_residual: bool = True,
    **overrides: Any,
) -> PretrainedConfig:
    """The HF config of a tiny model of `family` (see TINY_FAMILIES); overrides win."""
    kwargs = _config(family, vocab_size, n_layers, d_model, parallel_residual)
    kwargs |= {"eos_token_id": 0, "bos_token_id": 0, "pad_token_id": 1}
    return AutoConfig.for_model(family, **(kwargs | overrides))


def build_tiny_model(
    family: str,
    path: Path,
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 32,
    parallel_residual: bool = True,
    **overrides: Any,
) -> Path:
    """Write a random-initialised causal LM of `family` with its tokenizer to `path`.

    `parallel_residual` only matters for gpt_neox; `overrides` are passed to the HF config
    (e.g. ``intermediate_size=48``). Returns `path`.
    """
    if family not in TINY_FAMILIES:
        raise InvalidArgument(f"family: {family!r} is not one of {', '.join(TINY_FAMILIES)}")
    if d_model % 4 != 0:
        raise InvalidArgument(f"d_model: {d_model} is not a multiple of the 4 heads")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save(str(path / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN,
        "bos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "model_max_length": TINY_MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))

    config = tiny_config(
        family,
        vocab_size=tokenizer.get_vocab_size(),
        n_layers=n_layers,
        d_model=d_model,
        parallel_residual=parallel_residual,
        **overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Gemma-style norms start at weight 0 (scale 1); randomise every norm a little so
        # tests notice a norm applied in the wrong place.
        for name, param in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith(("ln_f.weight", "ln_f.bias")):
                param.data.add_(0.1 * torch.randn_like(param))
    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one shard; the bar is noise in test logs
    try:
        model.save_pretrained(path)
    finally:
        if bar_was_enabled:
            hf_logging.enable_progress_bar()
    return path
