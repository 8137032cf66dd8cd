"""Steering at width: the realistic model with the 1,048,576-latent SAE (``bench.wide``).

Two rows, realistic profile only (the demo gets them as not run):

- ``wide_steered``: greedy generation at batch 1, CLAMP (at twice its mean, every
  position) on the feature most often active in the unsteered run's generated tokens,
  against the same generation unsteered, paired. CLAMP needs the feature's TopK
  activity, i.e. whether its pre-activation is among the k largest of all 1,048,576:
  the full encoder per step (W_enc, 3 GiB in float32) except on steps where the
  feature's own pre-activation is <= 0 (``Sae.encode_sparse`` skips it there). The note
  says how many steps that was, and what the explicit approximate mode
  CLAMP_THRESHOLD (the feature's own encoder column only) runs at. Target >= 0.5x.
- ``wide_prefill_memory``: eight 960-token prompts steered the same way (every position,
  so every prefill runs the steering encoder) submitted together under the default
  ``generate_memory_bytes`` budget: how many the admission let in together, the
  estimate (``GenerationMemory``), and the process's peak anonymous memory (RssAnon,
  sampled every millisecond; the SAE's memory-mapped weights are file pages, not
  counted) over its level before. Target: the peak within the budget.

The SAE maps 6 GiB: on a shared machine run ``flock /work/wide.lock python -m bench
wide --quick``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import torch

from bench.context import Context, Mode, Profile
from bench.decompose import bare_minimum
from bench.generation import PROMPT
from bench.memory_worker import proc_status_mib
from bench.report import Row, rate_text, ratio_text
from bench.stats import interleaved, paired_ratio, rates, summarize
from saeserve.engine.generate import BatchGenerator, generate
from saeserve.engine.generation_memory import MIB
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import (
    DEFAULT_GENERATE_MEMORY_BYTES,
    EngineLimits,
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
    Variant,
)
from saeserve.model.hookpoints import hooked as hooks_on

TARGET_STEERED = 0.5
KEYS = ("wide_steered", "wide_prefill_memory")
TARGETS = {"wide_steered": f">= {TARGET_STEERED}x", "wide_prefill_memory": "peak <= budget"}


def measure(ctx: Context) -> list[Row]:
    if ctx.profile is not Profile.REALISTIC or ctx.mode is Mode.SMOKE:
        why = "the 1M-latent SAE is built for the realistic profile's model only"
        return [Row.not_run(k, TARGETS[k], why) for k in KEYS]
    served = ServedModel.load(ctx.assets.model_path, [ctx.wide_sae_path])
    served.lm = replace(served.lm, stop_token_ids=())  # every run writes all its tokens
    sae_id = next(iter(served.saes))
    return [_steered(ctx, served, sae_id), _prefill_memory(ctx, served, sae_id)]


def _tokens(served: ServedModel, req: GenerateRequest) -> list[int]:
    return [e.token_id for e in generate(served, req) if e.variant is Variant.STEERED]


def _most_active(
    served: ServedModel, sae_id: str, ids: list[int], n_prompt: int
) -> tuple[int, float, float]:
    """The feature most often in the TopK of the generated tokens of ``ids``: (feature,
    share of generated tokens where it is active, its mean value there)."""
    hooked = served.sae(sae_id)
    x = torch.tensor([ids])
    values, indices = bare_minimum(
        served.lm, hooked.sae, hooked.hook_point.name, x, torch.ones_like(x)
    )
    values, indices = values[n_prompt:], indices[n_prompt:]
    live = values > 0
    counts = torch.bincount(indices[live], minlength=hooked.sae.d_sae)
    f = int(counts.argmax())
    mean = float(values[live & (indices == f)].mean())
    return f, int(counts[f]) / max(1, len(values)), mean


def _skipped_share(
    served: ServedModel, sae_id: str, ids: list[int], n_prompt: int, feature: int
) -> float:
    """Share of the tokens of ``ids`` after the first ``n_prompt`` where the feature's own
    pre-activation is <= 0 (the tokens whose steering read skips the full encoder)."""
    hooked = served.sae(sae_id)
    sae = hooked.sae
    caught: list[torch.Tensor] = []

    def grab(h: torch.Tensor) -> None:
        caught.append(h[0])

    with torch.inference_mode(), hooks_on(served.lm, {hooked.hook_point: grab}):
        served.lm.model(input_ids=torch.tensor([ids]), use_cache=False)
        x_n, _ = sae.normalize(caught[0][n_prompt:])
        if sae.cfg.apply_b_dec_to_input:
            x_n = x_n - sae.b_dec
        own = x_n @ sae.W_enc[:, feature] + sae.b_enc[feature]
    return float((own <= 0).float().mean())


def _steered(ctx: Context, served: ServedModel, sae_id: str) -> Row:
    new_tokens = ctx.count(64, 32, 8, realistic=32)
    prompt_ids = list(served.lm.tokenizer(PROMPT)["input_ids"])
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    plain = GenerateRequest(prompt_ids=prompt_ids, sampling=sampling)
    unsteered_ids = prompt_ids + _tokens(served, plain)
    f, share, mean = _most_active(served, sae_id, unsteered_ids, len(prompt_ids))
    clamp = Intervention(InterventionMode.CLAMP, 2.0 * mean, sae_id=sae_id, feature=f)
    steered = GenerateRequest(prompt_ids=prompt_ids, sampling=sampling, interventions=[clamp])
    steered_ids = prompt_ids + _tokens(served, steered)
    skipped = _skipped_share(served, sae_id, steered_ids, len(prompt_ids), f)
    approx = Intervention(
        InterventionMode.CLAMP_THRESHOLD, 2.0 * mean, sae_id=sae_id, feature=f, threshold=0.0
    )
    threshold = GenerateRequest(prompt_ids=prompt_ids, sampling=sampling, interventions=[approx])
    warmup, repeats = ctx.count(1, 1, 1), ctx.count(5, 2, 1, realistic=3)
    plain_s, steered_s, threshold_s = interleaved(
        [
            lambda: _tokens(served, plain),
            lambda: _tokens(served, steered),
            lambda: _tokens(served, threshold),
        ],
        warmup=warmup,
        repeats=repeats,
    )
    ratio = paired_ratio(plain_s, steered_s)
    approx_ratio = paired_ratio(plain_s, threshold_s)
    sae = served.sae(sae_id).sae
    model_mib = sum(p.numel() * p.element_size() for p in served.lm.model.parameters()) / MIB
    enc_mib = sae.W_enc.numel() * sae.W_enc.element_size() / MIB
    note = (
        f"{len(prompt_ids)}-token prompt, {new_tokens} new tokens, {repeats} pairs; CLAMP at "
        f"{2 * mean:.2f} (twice its mean) on feature {f}, active at {100 * share:.0f}% of the "
        f"unsteered generated tokens. Exact TopK membership needs every pre-activation: a "
        f"step whose feature pre-activation is > 0 runs the full encoder, reading W_enc "
        f"({enc_mib:.0f} MiB) against the model's {model_mib:.0f} MiB, so such steps bound "
        f"the ratio near {model_mib / (model_mib + enc_mib):.2f}x; "
        f"{100 * skipped:.0f}% of the steered run's generated tokens had it <= 0 and skipped "
        f"the encoder. No cheaper exact test applies to this SAE: its encoder columns are "
        f"random unit vectors, so no bound short of every pre-activation (norms, the previous "
        f"token's values, a low-rank part) separates the k-th largest from the rest. The "
        f"explicit approximate mode CLAMP_THRESHOLD (threshold 0; its column alone) runs at "
        f"{approx_ratio.median:.2f}x unsteered ({ratio_text(approx_ratio)})."
    )
    return Row.judged(
        "wide_steered",
        baseline=rate_text(summarize(rates(plain_s, new_tokens)), "tok/s"),
        saeserve=rate_text(summarize(rates(steered_s, new_tokens)), "tok/s"),
        ratio=ratio.median,
        ratio_text=ratio_text(ratio),
        target=TARGETS["wide_steered"],
        met=ratio.median >= TARGET_STEERED,
        note=note,
    )


def _prefill_memory(ctx: Context, served: ServedModel, sae_id: str) -> Row:
    n_prompts, prompt_len, new_tokens = 8, 960, ctx.count(4, 2, 1)
    budget = DEFAULT_GENERATE_MEMORY_BYTES
    tok = served.lm.tokenizer
    text_ids = list(tok(PROMPT)["input_ids"])
    gen = BatchGenerator(served, limits=EngineLimits(generate_memory_bytes=budget))
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    requests = []
    for i in range(n_prompts):
        ids = ([*text_ids, i] * (prompt_len // len(text_ids) + 1))[:prompt_len]
        clamp = Intervention(InterventionMode.CLAMP, 5.0, sae_id=sae_id, feature=1000 + i)
        requests.append(GenerateRequest(prompt_ids=ids, sampling=sampling, interventions=[clamp]))
    skipped = sum(
        _skipped_share(served, sae_id, r.prompt_ids, 0, 1000 + i) for i, r in enumerate(requests)
    )
    admitted = 0
    for req in requests:
        prepared = gen.prepare(req)
        if not gen.fits(prepared):
            break
        gen.admit(prepared)
        admitted += 1
    estimate = gen.memory_bytes()
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(proc_status_mib("RssAnon"))
            time.sleep(0.001)

    before = proc_status_mib("RssAnon")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        while gen.has_work():
            gen.step()
    finally:
        stop.set()
        sampler.join()
    seconds = time.perf_counter() - start
    peak = max(samples, default=before) - before
    budget_mib = budget / MIB
    note = (
        f"{n_prompts} prompts of {prompt_len} tokens, each CLAMPed on its own feature at every "
        f"position, {new_tokens} new tokens; {admitted} admitted together under the default "
        f"budget (generate_memory_bytes {budget_mib:.0f} MiB), estimated at "
        f"{estimate / MIB:.0f} MiB; peak RssAnon over its level before: {peak:.0f} MiB "
        f"({len(samples)} samples over {seconds:.0f} s). Each steering encode holds one "
        f"{'x'.join(map(str, served.sae(sae_id).sae.block_shape(prompt_len)))} (tokens x "
        f"latents) block of pre-activations at a time; "
        f"{100 * skipped / n_prompts:.0f}% of the prompt tokens had their feature's own "
        f"pre-activation <= 0 and skipped the full encoder."
    )
    return Row.judged(
        "wide_prefill_memory",
        baseline=f"budget {budget_mib:.0f} MiB",
        saeserve=f"peak {peak:.0f} MiB ({admitted} of {n_prompts} together)",
        ratio=peak / budget_mib,
        ratio_text=f"{peak / budget_mib:.2f}x of the budget",
        target=TARGETS["wide_prefill_memory"],
        met=peak <= budget_mib,
        note=note,
    )
