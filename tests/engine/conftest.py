"""Fixtures for engine tests: tiny random models with random SAEs, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saeserve.engine.served_model import ServedModel
from saeserve.model.tiny import build_tiny_model
from saeserve.sae.base import Activation, InputNorm, Sae, SaeConfig

torch.set_num_threads(1)

D_SAE = 64


def random_sae(
    d_in: int,
    hook_point: str,
    *,
    sae_id: str,
    activation: Activation = Activation.TOPK,
    k: int | None = 8,
    input_norm: InputNorm = InputNorm.NONE,
    seed: int = 0,
    d_sae: int = D_SAE,
) -> Sae:
    g = torch.Generator().manual_seed(seed)
    cfg = SaeConfig(
        d_in=d_in, d_sae=d_sae, activation=activation, k=k if activation is Activation.TOPK else None,
        hook_point=hook_point, input_norm=input_norm, norm_scale=0.5, id=sae_id,
    )  # fmt: skip
    sae = Sae(cfg)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T + 0.1 * torch.randn(d_in, d_sae, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
        sae.threshold.copy_(0.05 * torch.rand(d_sae, generator=g))
    return sae


def served_with_saes(path: Path) -> ServedModel:
    served = ServedModel.load(path)
    d = served.lm.layout.d_model
    served.add_sae(random_sae(d, "resid_post.0", sae_id="post0", seed=1))
    served.add_sae(
        random_sae(d, "resid_mid.1", sae_id="mid1", k=4, input_norm=InputNorm.LAYERNORM, seed=2)
    )
    served.add_sae(
        random_sae(
            d, "blocks.1.hook_resid_post", sae_id="jump1", activation=Activation.JUMPRELU, seed=3
        )
    )
    served.add_sae(
        random_sae(
            d,
            "mlp_out.0",
            sae_id="relu0",
            activation=Activation.RELU,
            input_norm=InputNorm.SCALE,
            seed=4,
        )
    )
    return served


@pytest.fixture(scope="session")
def gpt2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2"), n_layers=3, d_model=32)


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("llama"), n_layers=3, d_model=32)


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def served(request: pytest.FixtureRequest) -> ServedModel:
    return served_with_saes(request.getfixturevalue(f"{request.param}_path"))
