"""Train the demo model's byte-level BPE tokenizer and save it as a Hugging Face folder.

GPT-2's scheme at a small vocabulary: bytes mapped to printable characters, GPT-2's
pre-tokenizer split (words, numbers, punctuation, spaces attached to the following word),
BPE merges learned on the training split, and one special token ``<|endoftext|>`` that
serves as bos, eos, pad and unk. The folder gets ``tokenizer.json`` and
``tokenizer_config.json`` so ``AutoTokenizer.from_pretrained(folder)`` loads it like any
fast tokenizer, with no hub access. Training is deterministic for a given corpus.

Run: ``python -m saeserve.demo.tokenizer --train build/demo/corpus/train.txt --out DIR``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from saeserve.demo.corpus import EOT, read_documents

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
"""The files of a saved demo tokenizer."""
DEFAULT_VOCAB_SIZE = 4096
"""Small enough for a 4M-parameter model to learn every embedding from a few M tokens."""


def _paragraphs(train_txt: Path) -> Iterator[str]:
    for doc in read_documents(train_txt):
        yield from doc.split("\n\n")


def build_bpe(train_txt: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Learn a byte-level BPE with ``<|endoftext|>`` as token 0 from a corpus file."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_paragraphs(train_txt), trainer)
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """The transformers view of a trained tokenizer, with its special tokens set."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    train_txt: Path,
    out_dir: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    model_max_length: int = 256,
) -> Path:
    """Train on ``train_txt`` and save to ``out_dir``; returns the ``tokenizer.json`` path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wrap_tokenizer(build_bpe(train_txt, vocab_size), model_max_length).save_pretrained(out_dir)
    # transformers 5 writes its own class name; the 4.x name loads in both.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir / "tokenizer.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="train.txt from the corpus step")
    parser.add_argument("--out", type=Path, required=True, help="folder for tokenizer.json")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--model-max-length", type=int, default=256)
    args = parser.parse_args(argv)
    path = train_tokenizer(args.train, args.out, args.vocab_size, args.model_max_length)
    print(f"wrote {path} (vocab {Tokenizer.from_file(str(path)).get_vocab_size()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
