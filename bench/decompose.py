"""Measurement 1: engine Decompose tokens/s against a hand-written bare minimum.

Both sides get the same 8 texts of 128 tokens (the smoke run: 2 x 32). The bare minimum is
the least any implementation must compute: the model's forward up to the SAE's hook point
(a forward hook on that block stops the forward there), the SAE's input normalisation,
one encoder matmul and ``torch.topk`` + ReLU over the real tokens, on the ids the engine's
tokenizer produced, right-padded alike (``bare_minimum``). saeserve is the engine's whole
``decompose`` call as the service makes it: tokenization, the forward to the hook, SAE
encode, top-k, reconstruction error and the copy of the small per-token arrays to the
host. The model's plain full forward (every block and the unembedding, what a
``transformers`` user runs to get activations) is timed in the same rotation for the note.
Target: >= 0.95x the bare minimum.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.assets import bench_texts
from bench.context import Context, Mode
from bench.profile import top_ops
from bench.report import Row, rate_text, ratio_text
from bench.stats import interleaved, paired_ratio, rates, summarize
from saeserve.engine.decompose import decompose
from saeserve.engine.served_model import ServedModel
from saeserve.engine.tokenize import tokenize
from saeserve.engine.types import DecomposeRequest
from saeserve.model.loader import LoadedModel
from saeserve.sae.base import InputNorm, Sae

TARGET = 0.95


class _Stop(Exception):
    """Raised by the hook to end the forward at the SAE's block."""


def hook_block(lm: LoadedModel, hook_point: str) -> torch.nn.Module:
    """The GPT-2 block whose output is ``resid_post.L`` (the bench's models are GPT-2)."""
    kind, _, layer = hook_point.partition(".")
    model: Any = lm.model
    if kind != "resid_post" or model.config.model_type != "gpt2":
        raise ValueError(f"the bare minimum is written for GPT-2 resid_post, not {hook_point}")
    block: torch.nn.Module = model.transformer.h[int(layer)]
    return block


def bare_minimum(
    lm: LoadedModel, sae: Sae, hook_point: str, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward to the hook, one encoder matmul, top-k: [real tokens, k] values and ids."""
    caught: list[torch.Tensor] = []

    def stop(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output)  # type: ignore[arg-type]
        raise _Stop

    handle = hook_block(lm, hook_point).register_forward_hook(stop)
    try:
        with torch.inference_mode():
            with contextlib.suppress(_Stop):
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
            h = caught[0][mask.bool()]  # [real tokens, d_model]
            if sae.cfg.input_norm is InputNorm.SCALE:
                h = h * sae.cfg.norm_scale
            if sae.cfg.apply_b_dec_to_input:
                h = h - sae.b_dec
            pre = torch.addmm(sae.b_enc, h, sae.W_enc)  # [real tokens, d_sae]
            top = torch.topk(pre, sae.cfg.k or 0, dim=-1)
            return torch.relu(top.values), top.indices
    finally:
        handle.remove()


def right_pad(rows: list[list[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N] ids and attention mask, each row's tokens first (as the engine pads)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


@dataclass
class Race:
    """Timings of one rotation of the bare minimum, engine decompose and a plain forward."""

    base: list[float]
    ours: list[float]
    full: list[float]
    tokens: int
    top_k: int
    max_diff: float
    """Largest difference of the two sides' top-k values."""
    minimum: Callable[[], None]
    engine_decompose: Callable[[], None]


def race(ctx: Context, served: ServedModel, sae_id: str, texts: list[str], *, repeats: int) -> Race:
    """The bare minimum, the engine's ``decompose`` and the model's plain full forward on
    ``texts``, interleaved ``repeats`` rounds, after checking the two sides agree."""
    lm = served.lm
    hooked = served.sae(sae_id)
    sae, hook = hooked.sae, hooked.hook_point.name
    req = DecomposeRequest(texts=texts, sae_ids=[sae_id])
    toks = [tokenize(lm.tokenizer, t, max_tokens=lm.max_positions) for t in texts]
    ids, mask = right_pad([t.token_ids for t in toks], pad_id=lm.pad_token_id)
    total = int(mask.sum())

    def plain_forward() -> None:
        with torch.inference_mode():
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def minimum() -> None:
        values, _ = bare_minimum(lm, sae, hook, ids, mask)
        assert values.shape[0] == total

    def engine_decompose() -> None:
        result = decompose(served, req)
        assert result.n_tokens == total

    # the engine's top-k values must be the bare minimum's (same model, same SAE)
    ours_values = torch.cat(
        [torch.from_numpy(t.saes[0].top_values) for t in decompose(served, req).texts]
    )
    k = ours_values.shape[1]
    diff = float((bare_minimum(lm, sae, hook, ids, mask)[0][:, :k] - ours_values).abs().max())
    base, ours, full = interleaved(
        [minimum, engine_decompose, plain_forward], warmup=ctx.count(2, 1, 1), repeats=repeats
    )
    return Race(base, ours, full, total, k, diff, minimum, engine_decompose)


def measure(ctx: Context) -> list[Row]:
    served = ctx.served
    lm = served.lm
    n_texts, n_tokens = (2, 32) if ctx.mode is Mode.SMOKE else (8, 128)
    texts = bench_texts(lm.tokenizer, n_texts, n_tokens)
    sae = served.sae(ctx.assets.sae_id).sae
    hook = ctx.assets.hook_point
    repeats = ctx.count(15, 7, 3, realistic=9)
    r = race(ctx, served, ctx.assets.sae_id, texts, repeats=repeats)
    base, ours, full, total, diff = r.base, r.ours, r.full, r.tokens, r.max_diff
    ratio = paired_ratio(base, ours)
    vs_full = paired_ratio(full, ours)
    met = ratio.median >= TARGET
    note = (
        f"{n_texts} texts, {total} real tokens, SAE at {hook} of {lm.layout.n_layers} layers "
        f"({sae.d_sae} latents, k={sae.cfg.k}); {repeats} rounds of the three calls, rotated. "
        f"The bare minimum excludes tokenization and the reconstruction error; decompose "
        f"includes both. Top-{r.top_k} values of the two differ by at most {diff:.1e}. "
        f"Against the model's plain full forward "
        f"({rate_text(summarize(rates(full, total)), 'tok/s')}) "
        f"decompose is {ratio_text(vs_full)}."
    )
    if not met and ctx.mode is not Mode.SMOKE:
        note += f" Profile of decompose: {top_ops(r.engine_decompose)}."
        note += f" Profile of the bare minimum: {top_ops(r.minimum)}."
    return [
        Row.judged(
            "decompose",
            baseline=rate_text(summarize(rates(base, total)), "tok/s"),
            saeserve=rate_text(summarize(rates(ours, total)), "tok/s"),
            ratio=ratio.median,
            ratio_text=ratio_text(ratio),
            target=f">= {TARGET:.2f}x",
            met=met and diff < 1e-3,
            note=note,
        )
    ]
