"""What the benchmarks run on: the realistic profile, the demo, or a generated stand-in.

``resolve_assets`` prefers an explicit ``--model``/``--sae``; the realistic profile is the
GPT-2-small-shaped model and 32k SAE that ``bench.realistic`` builds and caches; the demo
profile is the built-in demo
(``saeserve/demo/data/model`` with its SAEs under ``saes/<id>``), and otherwise writes a
random GPT-2 of the demo's shape (4 layers, d_model 256, vocab 4096) with a random TopK SAE
(k=32, 4096 latents) at a middle layer, saying so in ``description``. ``bench_texts``
cuts equal-length token windows out of a fixed English passage, so every run measures the
same input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from bench.realistic import GPT2_SMALL, build
from saeserve.model.tiny import TRAINING_TEXT, build_tiny_model, tiny_config
from saeserve.sae.base import Sae, SaeConfig
from saeserve.sae.formats import load_sae, write_sae
from saeserve.server.settings import DEMO_DATA


@dataclass(frozen=True)
class Shape:
    """Size of a generated stand-in model and SAE."""

    n_layers: int
    d_model: int
    vocab_size: int
    d_sae: int
    k: int


STANDIN = Shape(n_layers=4, d_model=256, vocab_size=4096, d_sae=4096, k=32)
TINY = Shape(n_layers=2, d_model=64, vocab_size=512, d_sae=512, k=16)
"""For the smoke run: seconds, not minutes."""


@dataclass(frozen=True)
class BenchAssets:
    model_path: Path
    sae_path: Path
    sae_id: str
    hook_point: str
    description: str
    """One line for the report: which model and SAE, and whether they are a stand-in."""


def resolve_assets(
    workdir: Path,
    *,
    model: Path | None = None,
    sae: Path | None = None,
    tiny: bool = False,
    realistic: bool = False,
) -> BenchAssets:
    if (model is None) != (sae is None):
        raise ValueError("--model and --sae go together")
    if model is not None and sae is not None:
        return _describe(model, sae, f"given: model {model}, SAE {sae}")
    if realistic and not tiny:
        s = GPT2_SMALL
        model_path, sae_path = build(s)
        n_vocab = len(AutoTokenizer.from_pretrained(model_path))
        return _describe(
            model_path,
            sae_path,
            f"realistic: random GPT-2-small shape ({s.n_layers} layers, d_model {s.d_model}, "
            f"vocab {s.vocab_size}, {s.n_positions} positions, std-{s.init_std} init; "
            f"~{_n_params(model_path) / 1e6:.0f}M parameters), byte-level BPE tokenizer "
            f"trained by the bench ({n_vocab} tokens), cached at {model_path.parent}",
        )
    if not tiny:
        demo_saes = _demo_saes()
        if demo_saes:
            return _describe(DEMO_DATA / "model", demo_saes[0], "the demo model")
    shape = TINY if tiny else STANDIN
    model_path, sae_path = build_standin(workdir, shape)
    why = "tiny smoke model" if tiny else "the demo model is not built yet"
    return _describe(
        model_path,
        sae_path,
        f"generated stand-in ({why}): random GPT-2, {shape.n_layers} layers, d_model "
        f"{shape.d_model}, vocab {shape.vocab_size}; random TopK SAE k={shape.k}, "
        f"{shape.d_sae} latents",
    )


def _n_params(model_path: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in model_path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                n += math.prod(st.get_slice(name).get_shape())
    return n


def _demo_saes() -> list[Path]:
    if not (DEMO_DATA / "model" / "config.json").is_file():
        return []
    folder = DEMO_DATA / "saes"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "cfg.json").is_file())


def _describe(model: Path, sae_path: Path, what: str) -> BenchAssets:
    sae = load_sae(sae_path)
    cfg = sae.cfg
    k = f"k={cfg.k}, " if cfg.k else ""
    description = (
        f"{what}; SAE {cfg.id!r} at {cfg.hook_point} ({cfg.activation}, {k}{cfg.d_sae} latents)"
    )
    return BenchAssets(model, sae_path, cfg.id, cfg.hook_point, description)


def build_standin(workdir: Path, shape: Shape) -> tuple[Path, Path]:
    """A random GPT-2 and a random TopK SAE at resid_post of its middle layer, on disk."""
    # build_tiny_model sizes the vocab to its small tokenizer; keep its tokenizer files and
    # replace the weights with a model of the demo's vocab size (ids past the tokenizer's
    # decode to nothing)
    model_path = build_tiny_model(
        "gpt2", workdir / "model", n_layers=shape.n_layers, d_model=shape.d_model
    )
    config = tiny_config(
        "gpt2",
        vocab_size=shape.vocab_size,
        n_layers=shape.n_layers,
        d_model=shape.d_model,
        initializer_range=0.02,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(model_path)
    layer = shape.n_layers // 2 - 1 if shape.n_layers > 1 else 0
    sae = random_topk_sae(shape.d_model, shape.d_sae, shape.k, f"resid_post.{layer}")
    return model_path, write_sae(sae, workdir / "saes" / "standin")


def random_topk_sae(d_in: int, d_sae: int, k: int, hook_point: str, seed: int = 0) -> Sae:
    """A TopK SAE with unit-norm random decoder rows and the transposed encoder."""
    g = torch.Generator().manual_seed(seed)
    cfg = SaeConfig(d_in=d_in, d_sae=d_sae, k=k, hook_point=hook_point, id="standin")
    sae = Sae(cfg)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.copy_(0.01 * torch.randn(d_sae, generator=g))
    return sae


def bench_texts(tokenizer: PreTrainedTokenizerBase, n_texts: int, n_tokens: int) -> list[str]:
    """``n_texts`` different texts of about ``n_tokens`` tokens each (BOS included)."""
    special = len(tokenizer("a", add_special_tokens=True)["input_ids"]) - len(
        tokenizer("a", add_special_tokens=False)["input_ids"]
    )
    want = n_tokens - special
    ids: list[int] = tokenizer(TRAINING_TEXT, add_special_tokens=False)["input_ids"]
    stride = max(1, len(ids) // (n_texts + 1))
    repeats = math.ceil((want + stride * n_texts) / len(ids)) + 1
    ids = ids * repeats
    texts = []
    for i in range(n_texts):
        window = ids[i * stride : i * stride + want]
        text = str(tokenizer.decode(window))
        # decoding and re-encoding may merge tokens differently; trim to at most n_tokens
        while len(tokenizer(text, add_special_tokens=True)["input_ids"]) > n_tokens:
            window = window[:-1]
            text = str(tokenizer.decode(window))
        texts.append(text)
    return texts
