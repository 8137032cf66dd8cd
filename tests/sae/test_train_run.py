"""The whole ``train-sae`` run on a tiny random GPT-2: corpus -> shuffled activations -> SAE folder.

Checks the corpus cutting, the activation buffer (shuffled across contexts, first positions
skipped, every token served once), the saved SAE and its metadata, that resuming from a
checkpoint reproduces the uninterrupted run bit for bit, and the subcommand's --help.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from saeserve.cli import main
from saeserve.model.loader import load_model
from saeserve.model.tiny import TRAINING_TEXT, build_tiny_model
from saeserve.sae.base import InputNorm
from saeserve.sae.formats import load_sae
from saeserve.sae.train import ActivationBuffer, TrainConfig, hook_point_activations, train_sae
from saeserve.sae.train.corpus import chunk_contexts, read_documents, texts_to_contexts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    model = build_tiny_model("gpt2", root / "gpt2", d_model=32, n_layers=2)
    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    paragraphs = TRAINING_TEXT.split("\n\n")
    for i, paragraph in enumerate(paragraphs):
        (corpus / ("sub" if i % 2 else "") / f"{i}.txt").write_text(paragraph * 6)
    (corpus / "ignored.md").write_text("not a .txt file")
    return model, corpus


def run_cfg(tiny: tuple[Path, Path], out: Path, **overrides: object) -> TrainConfig:
    model, corpus = tiny
    base: dict[str, object] = dict(
        model=str(model), hook_point="resid_post.1", corpus=str(corpus), out=str(out),
        k=4, n=64, tokens=256 * 24 + 100, batch_size=256, context_length=32,
        buffer_tokens=1500, model_batch_size=8, init_sample_tokens=512, checkpoint_every=5,
        progress=False, device="cpu",
    )  # fmt: skip
    return TrainConfig(**(base | overrides))  # type: ignore[arg-type]


def test_corpus_reads_txt_files_and_cuts_contexts(tiny: tuple[Path, Path]) -> None:
    _, corpus = tiny
    docs = list(read_documents(corpus))
    assert len(docs) == len(TRAINING_TEXT.split("\n\n"))  # the .md file is not read
    tokens = torch.arange(10)
    assert chunk_contexts(tokens, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]

    class Chars:  # one token per character, so the expected stream is written by hand
        def __call__(self, texts: list[str], **_: object) -> dict[str, list[list[int]]]:
            return {"input_ids": [[ord(c) for c in t] for t in texts]}

    contexts = texts_to_contexts(Chars(), ["ab", "cde"], 3, separator_id=0)
    assert contexts.tolist() == [[97, 98, 0], [99, 100, 101]]


def test_activation_buffer_shuffles_across_contexts_and_skips_positions() -> None:
    n_contexts, seq, skip = 40, 8, 2
    contexts = torch.arange(n_contexts * seq).reshape(n_contexts, seq)

    def ids_as_activations(ids: torch.Tensor) -> torch.Tensor:
        return ids[..., None].float()  # [b, seq, 1]: the activation names its token

    stream = ActivationBuffer(
        contexts, ids_as_activations, batch_size=30, buffer_tokens=240,
        model_batch_size=7, skip_first_positions=skip, seed=3,
    )  # fmt: skip
    assert stream.batches_per_buffer == 8  # 40 contexts of 6 usable tokens = 240
    served = torch.cat([stream.next_batch() for _ in range(8)]).squeeze(-1).long()
    assert served.unique().numel() == served.numel() == 240  # each token exactly once
    assert torch.all(served % seq >= skip)  # leading positions skipped
    first_batch_contexts = (served[:30] // seq).unique().numel()
    assert first_batch_contexts >= 15  # one batch mixes many contexts
    assert not torch.equal(served, served.sort().values)  # not in corpus order


def test_train_sae_writes_a_loadable_sae_with_metadata(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = run_cfg(tiny, tmp_path / "sae")
    result = train_sae(cfg)
    assert result.path == tmp_path / "sae"
    assert result.tokens_seen == cfg.tokens and result.steps == 25  # last batch is partial
    assert not (tmp_path / "sae" / "checkpoint.pt").exists()
    assert result.history[-1].fvu < result.history[0].fvu

    loaded = load_sae(result.path)
    assert loaded.cfg.k == 4 and loaded.cfg.d_sae == 64 and loaded.cfg.d_in == 32
    assert loaded.cfg.hook_point == "resid_post.1"
    assert loaded.cfg.model == "gpt2"
    meta = loaded.cfg.metadata
    assert meta["tokens_seen"] == cfg.tokens
    assert meta["recipe"]["k_aux"] == 16 and meta["recipe"]["lr"] > 0
    assert set(meta["final_metrics"]) >= {"fvu", "explained_variance", "l0", "dead_fraction"}
    assert result.sae.cfg.input_norm is InputNorm.SCALE
    torch.testing.assert_close(result.sae.W_dec.norm(dim=-1), torch.ones(64))

    # the scale makes activations have E|x|^2 = d_in in SAE space
    lm = load_model(cfg.model)
    from saeserve.model.hookpoints import resolve_hook_point

    acts = hook_point_activations(lm, resolve_hook_point("resid_post.1", lm.layout, lm.model))
    ids = texts_to_contexts(lm.tokenizer, [TRAINING_TEXT], 32, separator_id=lm.eos_token_id)
    x = acts(ids)[:, 1:].reshape(-1, 32)
    mean_sq = ((x * result.sae.cfg.norm_scale) ** 2).sum(-1).mean().item()
    assert mean_sq == pytest.approx(32, rel=0.3)

    # the file holds the scale folded into the weights (SAELens ignores norm_scaling_factor)
    assert loaded.cfg.input_norm is InputNorm.NONE
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), result.sae.encode(x), rtol=1e-4, atol=1e-5)


def test_resume_from_checkpoint_continues_identically(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    whole = train_sae(run_cfg(tiny, tmp_path / "whole"))

    first = train_sae(run_cfg(tiny, tmp_path / "split", stop_after_steps=13))
    assert first.path is None and first.checkpoint is not None and first.checkpoint.exists()
    assert first.steps == 13
    second = train_sae(run_cfg(tiny, tmp_path / "split", resume=True))
    assert second.path is not None and second.steps == whole.steps

    losses = [m.loss for m in first.history + second.history]
    assert losses == [m.loss for m in whole.history]  # bit-identical, not approximately
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(second.sae, name), getattr(whole.sae, name))

    train_sae(run_cfg(tiny, tmp_path / "other", stop_after_steps=2))
    with pytest.raises(ValueError, match="k: 4 -> 8"):
        train_sae(run_cfg(tiny, tmp_path / "other", resume=True, k=8))


def test_train_sae_help_lists_documented_flags() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train-sae", "--help"])
    text = " ".join(out.getvalue().split())
    assert "--hook-point HOOK_POINT" in text
    assert "Active latents per token (TopK). (default: 32)" in text
    assert "--multi-topk, --no-multi-topk" in text
    assert "--input-norm {none,layernorm,scale}" in text
