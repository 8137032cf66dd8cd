"""Measurement 10: Attribute latency for a 128-token prompt against one forward + backward by hand.

The hand-written minimum is what any activation x gradient attribution must compute: one
forward of the whole model on the prompt with the SAE's hook-point activation made a leaf
that requires grad (a forward hook on its GPT-2 block), the logit of the model's top next
token at the last position (``logits_to_keep=1``), and one ``torch.autograd.grad`` back to
that leaf. saeserve is the engine's whole ``attribute`` call: the same forward and
backward through its hook points, then the SAE's encode at the last token, direct effects
through the final norm and the unembedding, total effects, the error and bias terms and
the top-10 rankings. The smoke run uses 32 tokens. Target: >= 0.8x the minimum.
"""

from __future__ import annotations

import torch

from bench.assets import bench_texts
from bench.context import Context, Mode
from bench.decompose import hook_block
from bench.report import Row, ms_text, ratio_text
from bench.stats import interleaved, paired_ratio, summarize
from saeserve.engine.attribution import AttributionRequest, attribute
from saeserve.engine.tokenize import tokenize
from saeserve.model.loader import LoadedModel

TARGET = 0.8


def forward_backward(
    lm: LoadedModel, hook_point: str, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d logit(top token) / d h, h) at the hook point, each [n_tokens, d_model], by hand."""
    leaf: list[torch.Tensor] = []

    def make_leaf(_module: torch.nn.Module, _inputs: object, output: object) -> object:
        h = output[0] if isinstance(output, tuple) else output  # type: ignore[index]
        leaf.append(h.detach().requires_grad_(True))
        return (leaf[0], *output[1:]) if isinstance(output, tuple) else leaf[0]  # type: ignore[index]

    handle = hook_block(lm, hook_point).register_forward_hook(make_leaf)
    try:
        with torch.enable_grad():
            logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1]
            (grad,) = torch.autograd.grad(logits[logits.argmax()], leaf[0])
    finally:
        handle.remove()
    return grad[0], leaf[0][0].detach()


def measure(ctx: Context) -> list[Row]:
    served = ctx.served
    lm = served.lm
    n_tokens = 32 if ctx.mode is Mode.SMOKE else 128
    (text,) = bench_texts(lm.tokenizer, 1, n_tokens)
    token_ids = tokenize(lm.tokenizer, text, max_tokens=lm.max_positions).token_ids
    ids = torch.tensor([token_ids])
    hook = ctx.assets.hook_point
    req = AttributionRequest(token_ids, [ctx.assets.sae_id], top_n=10)
    sae = served.sae(ctx.assets.sae_id).sae

    def minimum() -> None:
        forward_backward(lm, hook, ids)

    def ours() -> None:
        attribute(served, req)

    def plain_forward() -> None:
        with torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    # the same gradient x input at the last token: the engine's terms sum to the by-hand one
    grad, h = forward_backward(lm, hook, ids)
    by_hand = float(grad[-1] @ h[-1])
    total = attribute(served, req).saes[0].total
    diff = abs(total.whole - by_hand) / max(abs(by_hand), 1e-6)

    repeats = ctx.count(15, 7, 3, realistic=9)
    base, cand, fwd = interleaved(
        [minimum, ours, plain_forward], warmup=ctx.count(2, 1, 1), repeats=repeats
    )
    ratio = paired_ratio(base, cand)
    note = (
        f"{len(token_ids)} tokens, SAE at {hook} of {lm.layout.n_layers} layers "
        f"({sae.d_sae} latents, k={sae.cfg.k}); {repeats} rounds of the three calls, rotated. "
        f"The plain no-grad forward takes {ms_text(summarize(fwd).median)}. Gradient x input "
        f"at the hook point: the engine's {total.whole:.4f} vs {by_hand:.4f} by hand "
        f"(relative difference {diff:.1e})."
    )
    return [
        Row.judged(
            "attribution",
            baseline=ms_text(summarize(base).median),
            saeserve=ms_text(summarize(cand).median),
            ratio=ratio.median,
            ratio_text=ratio_text(ratio),
            target=f">= {TARGET:.2f}x",
            met=ratio.median >= TARGET and diff < 1e-3,
            note=note,
        )
    ]
