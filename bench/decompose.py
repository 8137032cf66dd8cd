"""Measurement 1: engine Decompose tokens/s against the model's plain full forward.

Both sides get the same 8 texts of 128 tokens (the smoke run: 2 x 32). The baseline is
what a user of ``transformers`` runs to get activations: ``model(input_ids,
attention_mask)`` over every block and the unembedding, on the ids the engine's tokenizer
produced, right-padded alike. saeserve is the engine's whole ``decompose`` call as the
service makes it: tokenization, the forward up to the SAE's hook point, SAE encode,
top-k, reconstruction error and the copy of the small per-token arrays to the host.
Target: >= 1.0x with the SAE at a middle layer.
"""

from __future__ import annotations

import torch

from bench.assets import bench_texts
from bench.context import Context, Mode
from bench.profile import top_ops
from bench.report import Row, rate_text, ratio_text
from bench.stats import paired, paired_ratio, rates, summarize
from saeserve.engine.decompose import decompose
from saeserve.engine.tokenize import tokenize
from saeserve.engine.types import DecomposeRequest

TARGET = 1.0


def right_pad(rows: list[list[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N] ids and attention mask, each row's tokens first (as the engine pads)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def measure(ctx: Context) -> list[Row]:
    served = ctx.served
    lm = served.lm
    n_texts, n_tokens = (2, 32) if ctx.mode is Mode.SMOKE else (8, 128)
    texts = bench_texts(lm.tokenizer, n_texts, n_tokens)
    req = DecomposeRequest(texts=texts, sae_ids=[ctx.assets.sae_id])
    toks = [tokenize(lm.tokenizer, t, max_tokens=lm.max_positions) for t in texts]
    ids, mask = right_pad([t.token_ids for t in toks], pad_id=lm.pad_token_id)
    total = int(mask.sum())

    def plain_forward() -> None:
        with torch.inference_mode():
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def engine_decompose() -> None:
        result = decompose(served, req)
        assert result.n_tokens == total

    base, ours = paired(
        plain_forward,
        engine_decompose,
        warmup=ctx.count(3, 2, 1),
        repeats=ctx.count(21, 9, 3),
    )
    ratio = paired_ratio(base, ours)
    met = ratio.median >= TARGET
    note = (
        f"{n_texts} texts, {total} real tokens, SAE at {ctx.assets.hook_point} of "
        f"{lm.layout.n_layers} layers; the plain forward excludes tokenization, decompose includes it."
    )
    if not met and ctx.mode is not Mode.SMOKE:
        note += f" Profile of decompose: {top_ops(engine_decompose)}."
        note += f" Profile of the plain forward: {top_ops(plain_forward)}."
    return [
        Row.judged(
            "decompose",
            baseline=rate_text(summarize(rates(base, total)), "tok/s"),
            saeserve=rate_text(summarize(rates(ours, total)), "tok/s"),
            ratio=ratio.median,
            ratio_text=ratio_text(ratio),
            target=f">= {TARGET:.1f}x",
            met=met,
            note=note,
        )
    ]
