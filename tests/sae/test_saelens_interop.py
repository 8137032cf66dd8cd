"""saeserve and SAELens itself (the ``sae-lens`` package) on the same files: the latents and
reconstructions each computes agree, both for SAEs SAELens saved (TopK with its default
``rescale_acts_by_decoder_norm``) and for SAEs saeserve wrote (every activation and input
norm, a dataset scale included). Skipped where ``sae_lens`` does not import; the by-hand
transcriptions of SAELens's formulas in test_formats.py run everywhere.
Run: ``pytest tests/sae/test_saelens_interop.py -q``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from saeserve.sae.base import Activation, InputNorm, Sae, SaeConfig
from saeserve.sae.formats import load_sae, write_sae

sae_lens = pytest.importorskip("sae_lens")

D_IN, D_SAE, K = 16, 64, 8
TOL = {"rtol": 1e-4, "atol": 1e-4}  # float32 rounding of folded weights; values are ~1-10


def randomize(params: dict[str, torch.Tensor], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def inputs(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 5, D_IN, generator=gen) * 2 + 0.5


def assert_same_sae(ours: Sae, theirs: Any, x: torch.Tensor) -> None:
    with torch.no_grad():
        latents = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), latents, **TOL)
        torch.testing.assert_close(ours(x), theirs.decode(latents), **TOL)
    assert latents.count_nonzero() > 0  # not vacuous


@pytest.mark.parametrize("save", ["save_model", "save_inference_model"])
def test_saelens_topk_with_decoder_norm_rescale(tmp_path: Path, save: str) -> None:
    """``save_model`` keeps the raw weights; a training SAE's ``save_inference_model`` folds
    the norms first. Both cfg.json files say rescale_acts_by_decoder_norm: true."""
    metadata = sae_lens.saes.sae.SAEMetadata(hook_name="blocks.6.hook_resid_post")
    if save == "save_model":
        cfg = sae_lens.TopKSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True, metadata=metadata
        )
        sae = sae_lens.TopKSAE(cfg)
    else:
        cfg = sae_lens.TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=metadata)
        sae = sae_lens.TopKTrainingSAE(cfg)
    assert sae.cfg.rescale_acts_by_decoder_norm
    randomize(dict(sae.named_parameters()), seed=1)
    with torch.no_grad():  # decoder rows far from unit norm, so the rescale changes the top k
        sae.W_dec.mul_(torch.logspace(-1, 1, D_SAE)[torch.randperm(D_SAE)][:, None])
    getattr(sae, save)(tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["rescale_acts_by_decoder_norm"]

    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    assert (ours.cfg.activation, ours.cfg.k, ours.cfg.hook_point) == (
        Activation.TOPK,
        K,
        "blocks.6.hook_resid_post",
    )
    assert_same_sae(ours, theirs, inputs(2))


@pytest.mark.parametrize("activation", list(Activation))
@pytest.mark.parametrize("input_norm", list(InputNorm))
def test_saes_saeserve_writes_encode_the_same_in_saelens(
    tmp_path: Path, activation: Activation, input_norm: InputNorm
) -> None:
    cfg = SaeConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        activation=activation,
        k=K if activation is Activation.TOPK else None,
        hook_point="resid_post.3",
        input_norm=input_norm,
        norm_scale=0.37,
        apply_b_dec_to_input=activation is not Activation.JUMPRELU,
        id="ours",
    )
    ours = Sae(cfg)
    randomize(dict(ours.named_parameters()), seed=3)
    with torch.no_grad():
        ours.threshold.abs_()

    theirs = sae_lens.SAE.load_from_disk(write_sae(ours, tmp_path / "ours"))
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert_same_sae(ours, theirs, inputs(4))
