"""Measurement 5: greedy generation at batch 1, saeserve against ``transformers`` generate.

One prompt, 128 new tokens (smoke: 16), greedy. The baseline is ``model.generate`` on the
same loaded model; saeserve is the engine's ``generate`` (``BatchGenerator`` with its
KV cache, hooks and sampling), unsteered, then steered by 4 interventions (ADD, CLAMP,
SCALE, ABLATE on four features of the SAE, at every position). End-of-text is switched
off on both sides so each run writes exactly the same number of tokens; the unsteered
greedy tokens must equal transformers' (checked, and said in the note).
Targets: unsteered >= 1.0x transformers; steered >= 0.9x unsteered.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import GenerationConfig

from bench.context import Context, Mode
from bench.profile import top_ops
from bench.report import Row, rate_text, ratio_text
from bench.stats import paired, paired_ratio, rates, summarize
from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import (
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
    Variant,
)

PROMPT = "Once upon a time there was a small town by the sea. Every morning the"
TARGET_VS_HF = 1.0
TARGET_STEERED = 0.9


def four_interventions(sae_id: str) -> list[Intervention]:
    return [
        Intervention(InterventionMode.ADD, 4.0, sae_id=sae_id, feature=1),
        Intervention(InterventionMode.CLAMP, 3.0, sae_id=sae_id, feature=2),
        Intervention(InterventionMode.SCALE, 2.0, sae_id=sae_id, feature=3),
        Intervention(InterventionMode.ABLATE, 0.0, sae_id=sae_id, feature=4),
    ]


def bandwidth_estimate(served: ServedModel, sae_id: str) -> str:
    """Why steering costs what it does at batch 1: bytes of weights read per token."""
    model_bytes = sum(p.numel() * p.element_size() for p in served.lm.model.parameters())
    sae = served.sae(sae_id).sae
    enc_bytes = sae.W_enc.numel() * sae.W_enc.element_size()
    bound = model_bytes / (model_bytes + enc_bytes)
    return (
        f"At batch 1 a decode step reads every weight once: {model_bytes / 2**20:.1f} MiB of "
        f"model; CLAMP/SCALE/ABLATE need the feature's TopK activation, so the steered step "
        f"also runs the dense encoder (W_enc {list(sae.W_enc.shape)}, {enc_bytes / 2**20:.1f} MiB) "
        f"for the new token: a bandwidth-bound step then runs at about "
        f"{bound:.2f}x the unsteered speed."
    )


def engine_tokens(served: ServedModel, req: GenerateRequest) -> list[int]:
    return [e.token_id for e in generate(served, req) if e.variant is Variant.STEERED]


def measure(ctx: Context) -> list[Row]:
    served = ctx.served
    lm = served.lm
    new_tokens = ctx.count(128, 128, 16)
    prompt_ids = list(lm.tokenizer(PROMPT)["input_ids"])
    # every run writes exactly new_tokens tokens: no stop on end-of-text, on either side
    served.lm = replace(lm, stop_token_ids=())
    try:
        return _measure(ctx, served, prompt_ids, new_tokens)
    finally:
        served.lm = lm


def _measure(
    ctx: Context, served: ServedModel, prompt_ids: list[int], new_tokens: int
) -> list[Row]:
    lm = served.lm
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    plain = GenerateRequest(prompt_ids=prompt_ids, sampling=sampling)
    steered = GenerateRequest(
        prompt_ids=prompt_ids,
        sampling=sampling,
        interventions=four_interventions(ctx.assets.sae_id),
    )
    input_ids = torch.tensor([prompt_ids])
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=None,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=lm.pad_token_id,
    )

    def hf_tokens() -> list[int]:
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
            )
        return [int(t) for t in out[0, len(prompt_ids) :]]

    reference, ours_tokens = hf_tokens(), engine_tokens(served, plain)
    assert len(reference) == len(ours_tokens) == new_tokens, (len(reference), len(ours_tokens))
    same = reference == ours_tokens
    warmup, repeats = ctx.count(2, 1, 1), ctx.count(9, 5, 2)

    hf_s, ours_s = paired(
        hf_tokens, lambda: engine_tokens(served, plain), warmup=warmup, repeats=repeats
    )
    vs_hf = paired_ratio(hf_s, ours_s)
    plain_s, steered_s = paired(
        lambda: engine_tokens(served, plain),
        lambda: engine_tokens(served, steered),
        warmup=warmup,
        repeats=repeats,
    )
    vs_plain = paired_ratio(plain_s, steered_s)

    agree = "identical to" if same else "DIFFERENT from"
    note = (
        f"{len(prompt_ids)}-token prompt, {new_tokens} new tokens; saeserve's greedy tokens are "
        f"{agree} transformers'."
    )
    met_hf = vs_hf.median >= TARGET_VS_HF
    met_steered = vs_plain.median >= TARGET_STEERED
    steered_note = "ADD, CLAMP, SCALE and ABLATE on features 1-4, at all positions."
    if ctx.mode is not Mode.SMOKE:
        if not met_hf:
            ours_profile = top_ops(lambda: engine_tokens(served, plain), runs=1)
            note += f" Profile of saeserve generate: {ours_profile}."
            note += f" Profile of transformers generate: {top_ops(hf_tokens, runs=1)}."
        if not met_steered:
            steered_profile = top_ops(lambda: engine_tokens(served, steered), runs=1)
            steered_note += f" {bandwidth_estimate(served, ctx.assets.sae_id)}"
            steered_note += f" Profile of steered generate: {steered_profile}."
    return [
        Row.judged(
            "generate",
            baseline=rate_text(summarize(rates(hf_s, new_tokens)), "tok/s"),
            saeserve=rate_text(summarize(rates(ours_s, new_tokens)), "tok/s"),
            ratio=vs_hf.median,
            ratio_text=ratio_text(vs_hf),
            target=f">= {TARGET_VS_HF:.1f}x",
            met=met_hf and same,
            note=note,
        ),
        Row.judged(
            "generate_steered",
            baseline=rate_text(summarize(rates(plain_s, new_tokens)), "tok/s"),
            saeserve=rate_text(summarize(rates(steered_s, new_tokens)), "tok/s"),
            ratio=vs_plain.median,
            ratio_text=ratio_text(vs_plain),
            target=f">= {TARGET_STEERED:.1f}x",
            met=met_steered,
            note=steered_note,
        ),
    ]
