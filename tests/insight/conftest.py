"""Fixtures for feature-index tests: a tiny random GPT-2 and a tiny random TopK SAE on it.

The SAE's encoder is its unit-norm decoder's transpose with zero biases, so each token
fires several different latents (a random encoder bias would let a few latents win every
token). Everything is seeded; building both takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saeserve.model.loader import LoadedModel, load_model
from saeserve.model.tiny import TRAINING_TEXT, build_tiny_model
from saeserve.sae.base import Activation, Sae, SaeConfig

D_MODEL = 32
D_SAE = 48
K = 4
HOOK = "resid_post.0"


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.set_num_threads(1)
    folder = build_tiny_model("gpt2", tmp_path_factory.mktemp("insight") / "gpt2", d_model=D_MODEL)
    return load_model(folder)


def random_sae(activation: Activation = Activation.TOPK, seed: int = 0) -> Sae:
    cfg = SaeConfig(
        d_in=D_MODEL,
        d_sae=D_SAE,
        activation=activation,
        k=K if activation is Activation.TOPK else None,
        hook_point=HOOK,
        id="tiny-sae",
    )
    sae = Sae(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_dec = torch.randn(D_SAE, D_MODEL, generator=gen)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        if activation is not Activation.TOPK:
            sae.b_enc.fill_(-0.3)  # a ReLU SAE needs a negative bias to be sparse at all
    return sae


@pytest.fixture(scope="session")
def tiny_sae() -> Sae:
    return random_sae()


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return [p for p in TRAINING_TEXT.split("\n\n") if p.strip()]


@pytest.fixture(scope="session")
def tiny_folder(tiny_lm: LoadedModel) -> Path:
    return Path(tiny_lm.path)
