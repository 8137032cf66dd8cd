"""Measurement 5: greedy generation at batch 1, saeserve against ``transformers`` generate.

One prompt, 128 new tokens (smoke: 16), greedy. The baseline is ``model.generate`` on the
same loaded model; saeserve is the engine's ``generate`` (``BatchGenerator`` with its
KV cache, hooks and sampling), unsteered, then steered by 4 interventions (ADD, CLAMP,
SCALE, ABLATE, at every position) on the four features most often active in the
unsteered run's generated tokens (``active_features``), so CLAMP, SCALE and ABLATE take
their exact path (the feature's TopK activity) rather than the shortcut for a feature
that is off. End-of-text is switched off on both sides so each run writes exactly the
same number of tokens; the unsteered greedy tokens must equal transformers' (checked, and
said in the note). The same module runs the in-process batch-8 decode row
(``bench.decode``).
Targets: unsteered >= 1.05x transformers; steered >= 0.95x unsteered.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import GenerationConfig

from bench.context import Context, Mode
from bench.decode import measure_engine_step
from bench.decompose import bare_minimum
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
TARGET_VS_HF = 1.05
TARGET_STEERED = 0.95


def active_features(
    served: ServedModel, sae_id: str, hook_point: str, ids: list[int], n_prompt: int
) -> list[tuple[int, float, float]]:
    """The 4 features most often in the TopK of the generated tokens of ``ids``:
    (feature, share of generated tokens where it is active, its mean value there)."""
    sae = served.sae(sae_id).sae
    x = torch.tensor([ids])
    values, indices = bare_minimum(served.lm, sae, hook_point, x, torch.ones_like(x))
    values, indices = values[n_prompt:], indices[n_prompt:]  # [generated, k]
    live = values > 0
    counts = torch.bincount(indices[live], minlength=sae.d_sae)
    sums = torch.zeros(sae.d_sae).index_add_(0, indices[live], values[live])
    top = torch.topk(counts, 4).indices.tolist()
    n = max(1, values.shape[0])
    return [(f, int(counts[f]) / n, float(sums[f] / counts[f].clamp_min(1))) for f in top]


def four_interventions(sae_id: str, features: list[tuple[int, float, float]]) -> list[Intervention]:
    (f_add, _, _), (f_clamp, _, v_clamp), (f_scale, _, _), (f_ablate, _, _) = features
    return [
        Intervention(InterventionMode.ADD, 4.0, sae_id=sae_id, feature=f_add),
        Intervention(InterventionMode.CLAMP, 2.0 * v_clamp, sae_id=sae_id, feature=f_clamp),
        Intervention(InterventionMode.SCALE, 2.0, sae_id=sae_id, feature=f_scale),
        Intervention(InterventionMode.ABLATE, 0.0, sae_id=sae_id, feature=f_ablate),
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
        rows = _measure(ctx, served, prompt_ids, new_tokens)
    finally:
        served.lm = lm
    step_tokens = ctx.count(64, 32, 8, realistic=32)
    return rows + measure_engine_step(ctx, step_tokens, ctx.count(7, 3, 2, realistic=5))


def _measure(
    ctx: Context, served: ServedModel, prompt_ids: list[int], new_tokens: int
) -> list[Row]:
    lm = served.lm
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    plain = GenerateRequest(prompt_ids=prompt_ids, sampling=sampling)
    unsteered_ids = prompt_ids + engine_tokens(served, plain)
    features = active_features(
        served, ctx.assets.sae_id, ctx.assets.hook_point, unsteered_ids, len(prompt_ids)
    )
    steered = GenerateRequest(
        prompt_ids=prompt_ids,
        sampling=sampling,
        interventions=four_interventions(ctx.assets.sae_id, features),
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
    warmup, repeats = ctx.count(2, 1, 1, realistic=1), ctx.count(9, 5, 2, realistic=7)

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
        f"{len(prompt_ids)}-token prompt, {new_tokens} new tokens, {repeats} pairs; saeserve's "
        f"greedy tokens are {agree} transformers'."
    )
    met_hf = vs_hf.median >= TARGET_VS_HF
    met_steered = vs_plain.median >= TARGET_STEERED
    modes = ("ADD 4", "CLAMP at 2x its mean", "SCALE 2x", "ABLATE")
    steered_note = (
        "At all positions, on the features most often active in the unsteered text: "
        + ", ".join(
            f"{m} on {f} (active at {100 * share:.0f}% of generated tokens, mean {v:.2f})"
            for m, (f, share, v) in zip(modes, features, strict=True)
        )
        + f"; {repeats} pairs."
    )
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
            target=f">= {TARGET_VS_HF:.2f}x",
            met=met_hf and same,
            note=note,
        ),
        Row.judged(
            "generate_steered",
            baseline=rate_text(summarize(rates(plain_s, new_tokens)), "tok/s"),
            saeserve=rate_text(summarize(rates(steered_s, new_tokens)), "tok/s"),
            ratio=vs_plain.median,
            ratio_text=ratio_text(vs_plain),
            target=f">= {TARGET_STEERED:.2f}x",
            met=met_steered,
            note=steered_note,
        ),
    ]
