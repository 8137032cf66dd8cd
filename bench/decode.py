"""Measurement 6 (in-process part): batched greedy decode, the engine against the plain model.

The physical limit for n concurrent greedy streams on this hardware is the plain model
decoding n rows at once: a hand-written loop of transformers forwards with its own KV
cache (``DynamicCache``), argmax, no hooks, no steering, no text (``plain_greedy``).
``engine_greedy`` runs the same n prompts through the engine's ``BatchGenerator`` (its KV
cache, hooks and sampling, detokenized text and events), unsteered, submitted together so
they share one prefill, as concurrent streams do in the replica. ``measure_engine_step``
times both, interleaved, at 8 rows; ``plain_rate`` gives the plain loop's tokens/s at
each stream count for the service rows (``bench.streams``).
Target: the engine's 8-row decode >= 0.9x the plain batch-8 decode.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from bench.context import Context
from bench.report import Row, rate_text, ratio_text
from bench.stats import paired, paired_ratio, rates, summarize, time_once
from saeserve.engine.generate import BatchGenerator
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import GenerateRequest, SamplingParams

PROMPT = "Once upon a time there was a small town by the sea."
"""The streams' prompt (``bench.streams.PROMPT`` is this text)."""
TARGET_STEP = 0.9
N_ROWS = 8


def prompt_ids(served: ServedModel) -> list[int]:
    return list(served.lm.tokenizer(PROMPT)["input_ids"])


def plain_greedy(served: ServedModel, ids: list[int], n_rows: int, new_tokens: int) -> int:
    """``n_rows`` copies of ``ids`` decoded greedily by the bare model; returns tokens made."""
    model = served.lm.model
    x = torch.tensor([ids] * n_rows)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1).logits
        for _ in range(new_tokens - 1):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # [n_rows, 1]
            logits = model(input_ids=nxt, cache=cache, use_cache=True).logits
        logits[:, -1].argmax(dim=-1)
    return n_rows * new_tokens


def engine_greedy(served: ServedModel, ids: list[int], n_rows: int, new_tokens: int) -> int:
    """The same rows through the engine's batched generator, unsteered; returns tokens made."""
    gen = BatchGenerator(served)
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    for _ in range(n_rows):
        gen.submit(GenerateRequest(prompt_ids=list(ids), sampling=sampling))
    made = 0
    while gen.has_work():
        made += sum(1 for e in gen.step() if e.token_id >= 0)
    return made


def plain_rate(served: ServedModel, n_rows: int, new_tokens: int) -> float:
    """Tokens/s of one plain batch-``n_rows`` greedy decode of the streams' prompt."""
    ids = prompt_ids(served)
    return n_rows * new_tokens / time_once(lambda: plain_greedy(served, ids, n_rows, new_tokens))


def measure_engine_step(ctx: Context, new_tokens: int, repeats: int) -> list[Row]:
    served = ctx.served
    ids = prompt_ids(served)
    made = engine_greedy(served, ids, N_ROWS, new_tokens)
    assert made == N_ROWS * new_tokens, made
    base, ours = paired(
        lambda: plain_greedy(served, ids, N_ROWS, new_tokens),
        lambda: engine_greedy(served, ids, N_ROWS, new_tokens),
        warmup=1,
        repeats=repeats,
    )
    ratio = paired_ratio(base, ours)
    total = N_ROWS * new_tokens
    return [
        Row.judged(
            "engine_step_8",
            baseline=rate_text(summarize(rates(base, total)), "tok/s"),
            saeserve=rate_text(summarize(rates(ours, total)), "tok/s"),
            ratio=ratio.median,
            ratio_text=ratio_text(ratio),
            target=f">= {TARGET_STEP:.1f}x",
            met=ratio.median >= TARGET_STEP,
            note=(
                f"{N_ROWS} rows of the same {len(ids)}-token prompt, {new_tokens} greedy tokens "
                f"each, one shared prefill, no steering; baseline: transformers forwards with its "
                f"DynamicCache and argmax in a loop; saeserve: BatchGenerator steps (KV cache, "
                f"hooks, sampling, text, events); {repeats} pairs."
            ),
        )
    ]
