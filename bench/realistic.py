"""The realistic bench profile: a GPT-2-small-shaped model and a 32k TopK SAE, cached on disk.

What users run is GPT-2 small with 32k-latent SAEs, not the 1.35M-parameter demo, so the
default benchmark builds that shape itself, with no download: a GPT-2 of 12 layers,
d_model 768, 12 heads, vocab 50,257 and 1,024 positions, initialised as transformers
does (normal, std 0.02), with a byte-level BPE tokenizer trained here (GPT-2's scheme,
``saeserve.demo.tokenizer.build_bpe``) on text this machine already has: the bench's
fixed English passage and the Python standard library's sources (docstrings, comments and
code; the demo corpus's Debian packages are usually not installed, and the repository's
own files change with every commit, which would rebuild the cache). The SAE is a random TopK SAE (k 32, 32,768 latents, unit-norm decoder rows, the
encoder their transpose) at resid_post.6, written in saeserve's native format.

Everything lands in a cache folder (``SAESERVE_BENCH_CACHE``, else
``$XDG_CACHE_HOME/saeserve-bench``, else ``~/.cache/saeserve-bench``) under a key that
names the shape and a hash of the corpus, and is reused from there. Building it takes a
minute or two on a CPU (most of it the tokenizer); ``python -m bench.realistic`` builds it
and prints where.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from saeserve.demo.corpus import DOC_SEPARATOR, EOT
from saeserve.demo.tokenizer import build_bpe, wrap_tokenizer
from saeserve.model.tiny import TRAINING_TEXT
from saeserve.sae.formats import write_sae


@dataclass(frozen=True)
class RealisticShape:
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    vocab_size: int = 50257
    n_positions: int = 1024
    init_std: float = 0.02
    d_sae: int = 32768
    k: int = 32
    sae_layer: int = 6

    @property
    def key(self) -> str:
        return (
            f"gpt2-{self.n_layers}x{self.d_model}-v{self.vocab_size}-p{self.n_positions}"
            f"-sae{self.d_sae}k{self.k}L{self.sae_layer}"
        )


GPT2_SMALL = RealisticShape()
CORPUS_LIMIT_BYTES = 12 * 2**20
"""Enough text for the BPE to learn its full 50k vocabulary, small enough to train in ~1 min."""


def cache_root() -> Path:
    if env := os.environ.get("SAESERVE_BENCH_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saeserve-bench"


def corpus_documents(limit: int = CORPUS_LIMIT_BYTES) -> list[str]:
    """The tokenizer's training text, in a fixed order: the passage, then stdlib sources."""
    docs = [TRAINING_TEXT]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    py = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    size = 0
    for path in py:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        text = text.replace(EOT, "")
        docs.append(text)
        size += len(text)
        if size >= limit:
            break
    return docs


def build(shape: RealisticShape = GPT2_SMALL, root: Path | None = None) -> tuple[Path, Path]:
    """(model folder, SAE folder) of the realistic profile, built once and cached."""
    docs = corpus_documents()
    digest = hashlib.sha256(DOC_SEPARATOR.join(docs).encode()).hexdigest()[:12]
    folder = (root or cache_root()) / f"{shape.key}-{digest}"
    model_path = folder / "model"
    sae_path = folder / "saes" / f"resid_post.{shape.sae_layer}"
    if (folder / "done").is_file():
        return model_path, sae_path
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "model").mkdir(parents=True)
    train_txt = tmp / "corpus.txt"
    train_txt.write_text(DOC_SEPARATOR.join(docs), encoding="utf-8")
    tokenizer = build_bpe(train_txt, vocab_size=shape.vocab_size)
    wrap_tokenizer(tokenizer, shape.n_positions).save_pretrained(tmp / "model")
    train_txt.unlink()
    eot = tokenizer.token_to_id(EOT)
    config = GPT2Config(
        vocab_size=shape.vocab_size,
        n_positions=shape.n_positions,
        n_embd=shape.d_model,
        n_layer=shape.n_layers,
        n_head=shape.n_heads,
        initializer_range=shape.init_std,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2LMHeadModel(config).eval().save_pretrained(tmp / "model")
    from bench.assets import random_topk_sae  # here: bench.assets imports this module

    sae = random_topk_sae(
        shape.d_model, shape.d_sae, shape.k, f"resid_post.{shape.sae_layer}", seed=0
    )
    write_sae(sae, tmp / "saes" / f"resid_post.{shape.sae_layer}")
    (tmp / "done").write_text(f"{shape}\ncorpus sha256 {digest}, {len(docs)} documents\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return model_path, sae_path


if __name__ == "__main__":
    model, sae_folder = build()
    print(f"model: {model}\nSAE: {sae_folder}")
