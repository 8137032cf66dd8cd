"""``evaluate_sae`` and ``eval-sae`` on a tiny GPT-2 briefly trained on the tiny corpus.

A perfect SAE (TopK over [x, -x], decoding back to x) must give delta CE = 0, KL = 0 and a
CE-loss score of 1; an all-zero SAE must give the zero-ablation CE (delta CE > 0, score 0).
Clean CE and the reconstruction numbers are recomputed by hand from a plain forward pass
(``output_hidden_states``), independent of the hooks.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from saeserve.cli import main
from saeserve.model.loader import LoadedModel, load_model
from saeserve.model.tiny import TRAINING_TEXT, build_tiny_model
from saeserve.sae.base import InputNorm, Sae, SaeConfig
from saeserve.sae.evaluate import evaluate_contexts, evaluate_sae, format_table
from saeserve.sae.formats import write_sae
from saeserve.sae.train.corpus import texts_to_contexts

torch.set_num_threads(1)
D = 32
CONTEXT = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 fitted for 30 steps to TRAINING_TEXT, so that ablating its residual hurts."""
    path = build_tiny_model("gpt2", tmp_path_factory.mktemp("eval") / "gpt2", d_model=D)
    lm = load_model(path)
    ids = texts_to_contexts(lm.tokenizer, [TRAINING_TEXT], CONTEXT, separator_id=lm.eos_token_id)
    model = lm.model.requires_grad_(True)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        logits = model(input_ids=ids).logits
        F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
        ).backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(trained: Path) -> LoadedModel:
    return load_model(trained)


def identity_sae(hook_point: str = "resid_post.0") -> Sae:
    """TopK(k=d) over pre = [x, -x] picks each coordinate's positive part: x_hat = x exactly."""
    sae = Sae(SaeConfig(d_in=D, d_sae=2 * D, k=D, hook_point=hook_point))
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def zero_sae(hook_point: str = "resid_post.0") -> Sae:
    return Sae(SaeConfig(d_in=D, d_sae=2 * D, k=4, hook_point=hook_point))


def contexts(lm: LoadedModel) -> torch.Tensor:
    return texts_to_contexts(lm.tokenizer, [TRAINING_TEXT], CONTEXT, separator_id=lm.eos_token_id)


def test_perfect_sae_has_zero_delta_ce(lm: LoadedModel) -> None:
    result = evaluate_contexts(lm, identity_sae(), contexts(lm), batch_size=5)
    assert result.delta_ce == pytest.approx(0.0, abs=1e-5)
    assert result.kl_divergence == pytest.approx(0.0, abs=1e-6)
    assert result.ce_loss_score == pytest.approx(1.0, abs=1e-4)
    assert result.normalized_mse == pytest.approx(0.0, abs=1e-10)
    assert result.explained_variance == pytest.approx(1.0, abs=1e-10)
    assert result.ce_clean < result.ce_zero_ablation  # the fitted model needs its residual


def test_zero_sae_has_positive_delta_ce_equal_to_ablation(lm: LoadedModel) -> None:
    result = evaluate_contexts(lm, zero_sae(), contexts(lm), batch_size=5)
    assert result.delta_ce > 0.5
    assert result.ce_spliced == pytest.approx(result.ce_zero_ablation, rel=1e-6)
    assert result.ce_loss_score == pytest.approx(0.0, abs=1e-6)
    assert result.kl_divergence > 0.1
    assert result.l0 == 0.0 and result.dead_fraction == 1.0


def test_clean_ce_and_reconstruction_match_a_plain_forward(lm: LoadedModel) -> None:
    ids = contexts(lm)
    g = torch.Generator().manual_seed(0)
    sae = Sae(
        SaeConfig(
            d_in=D,
            d_sae=48,
            k=6,
            hook_point="resid_post.0",
            input_norm=InputNorm.SCALE,
            norm_scale=0.7,
        )
    )
    with torch.no_grad():
        w_dec = torch.randn(48, D, generator=g)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(0.1 * torch.randn(D, generator=g))
    result = evaluate_contexts(lm, sae, ids, batch_size=4, skip_first_positions=2)

    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
        logp = out.logits[:, :-1].log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[:, 2:]  # predictions from pos >= 2
        x = out.hidden_states[1][:, 2:].reshape(-1, D)  # output of block 0 (the last has ln_f)
        x_n = x * 0.7
        pre = (x_n - sae.b_dec) @ sae.W_enc
        top = pre.topk(6, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
        x_hat = (acts @ sae.W_dec + sae.b_dec) / 0.7
    assert result.skip_first_positions == 2
    assert result.tokens == ids.shape[0] * (CONTEXT - 2)
    assert result.ce_clean == pytest.approx(nll.mean().item(), rel=1e-5)
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert result.normalized_mse == pytest.approx(fvu.item(), rel=1e-4)
    assert result.l0 == pytest.approx((acts > 0).sum(-1).float().mean().item())


def test_evaluate_sae_on_texts_matches_contexts(lm: LoadedModel) -> None:
    by_text = evaluate_sae(
        lm, identity_sae("resid_post.1"), [TRAINING_TEXT], context_length=CONTEXT
    )
    by_ids = evaluate_contexts(lm, identity_sae("resid_post.1"), contexts(lm))
    assert by_text == by_ids
    assert "delta CE" in format_table(by_text)


def test_eval_sae_command_prints_json(lm: LoadedModel, trained: Path, tmp_path: Path) -> None:
    sae_dir = write_sae(zero_sae(), tmp_path / "zero")
    corpus = tmp_path / "heldout.txt"
    corpus.write_text(TRAINING_TEXT)
    argv = ["eval-sae", "--model", str(trained), "--sae", str(sae_dir), "--corpus", str(corpus),
            "--context-length", str(CONTEXT), "--device", "cpu", "--json"]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    report = json.loads(out.getvalue())
    assert report["hook_point"] == "resid_post.0"
    assert report["delta_ce"] > 0.5 and report["ce_loss_score"] == pytest.approx(0, abs=1e-6)

    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        assert main(argv[:-1]) == 0
    assert "explained variance" in table.getvalue() and "KL(clean || spliced)" in table.getvalue()
