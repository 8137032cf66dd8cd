"""Measurement 10: the same SAE split 2 ways on local Ray vs unsplit, Decompose and steered
Generate.

The model runs in this process (as it does in a model replica); the unsplit side holds the
SAE whole (the engine as the service runs it), the split side is a ``ShardedSae`` whose two
shards are ``SaeShardReplica`` Serve deployments on a local Ray (one CPU each, their own
processes), reached through ``RemoteShard`` handles exactly as the model replica reaches
them. Decompose: 8 texts x 128 tokens with the reconstruction error (both shard rounds);
steered Generate: the four interventions of measurement 5 on the features most often
active (CLAMP/SCALE/ABLATE call the shards every step), greedy. The split side's answers
must equal the unsplit's (checked; the note says so). The note also gives the round trip
of one empty call to a shard (the per-call overhead). ``sharded`` runs it on the profile's
32k SAE, ``sharded_wide`` on the 1,048,576-latent SAE (``bench.wide``; fewer texts, tokens
and pairs; run it under ``flock /work/wide.lock``). Ratio = unsplit time / split time (> 1: the split is faster). The split side computes on
two processes of one CPU each against the unsplit side's one thread: where the encoder
dominates (1M latents) that parallelism shows, where it does not (32k) the round trips do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.assets import bench_texts
from bench.context import Context
from bench.generation import PROMPT, active_features, engine_tokens, four_interventions
from bench.report import Row, ms_text, rate_text, ratio_text
from bench.server import bench_settings, free_port
from bench.stats import paired, paired_ratio, rates, repeat, summarize
from saeserve.engine.decompose import decompose
from saeserve.engine.served_model import ServedModel
from saeserve.engine.sharded_sae import ShardedSae
from saeserve.engine.types import DecomposeRequest, DecomposeResult, GenerateRequest, SamplingParams
from saeserve.sae.formats import load_sae, read_sae
from saeserve.server import local_ray
from saeserve.server.settings import SaeSharding, SaeSpec
from saeserve.server.shard_replica import SaeShardReplica, remote_shards, shard_deployment_name

SHARDS = 2
TARGET = "(no target)"


@contextmanager
def shard_deployments(ctx: Context, spec: SaeSpec) -> Iterator[list[Any]]:
    """A local Ray with one Serve app per shard of ``spec``; yields their handles."""
    settings = bench_settings(ctx.assets, free_port(), free_port())
    local_ray.prepare(settings)
    import ray
    from ray import serve

    os.environ["OMP_NUM_THREADS"] = "1"  # a shard replica with num_cpus=1 runs one thread
    ray.init(num_cpus=SHARDS + 1, logging_level=logging.WARNING, log_to_driver=False,
             **local_ray.init_options(settings))  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": settings.http_port})
        handles = []
        for i in range(SHARDS):
            name = shard_deployment_name("bench", spec.effective_id, i)
            app = (
                serve.deployment(SaeShardReplica)  # type: ignore[attr-defined]
                .options(name=name, ray_actor_options={"num_cpus": 1})
                .bind(spec.model_dump(mode="json"), i)
            )
            handles.append(serve.run(app, name=name, route_prefix=None))
        yield handles
    finally:
        serve.shutdown()
        ray.shutdown()


def _same(a: DecomposeResult, b: DecomposeResult) -> bool:
    return all(
        np.array_equal(x.top_ids, y.top_ids) and np.allclose(x.top_values, y.top_values, atol=1e-5)
        for ta, tb in zip(a.texts, b.texts, strict=True)
        for x, y in zip(ta.saes, tb.saes, strict=True)
    )


def measure(
    ctx: Context, sae_path: Path | None = None, key: str = "sharded", wide: bool = False
) -> list[Row]:
    path = sae_path or ctx.assets.sae_path
    whole = ServedModel(ctx.served.lm)
    whole.add_sae(load_sae(path, sae_id=ctx.assets.sae_id))
    spec = SaeSpec(path=path, id=ctx.assets.sae_id, sharding=SaeSharding(shards=SHARDS))
    with shard_deployments(ctx, spec) as handles:
        cfg, tensors = read_sae(path, sae_id=spec.effective_id)
        split = ServedModel(ctx.served.lm)
        split.add_sae(ShardedSae(cfg, tensors["b_dec"][1], remote_shards(spec, cfg.d_sae, handles)))
        del tensors
        call_s = repeat(lambda: handles[0].latents.remote().result(), warmup=3, repeats=50)
        return _measure(ctx, whole, split, cfg.d_sae, key, summarize(call_s).median, wide)


def _measure(
    ctx: Context,
    whole: ServedModel,
    split: ServedModel,
    d_sae: int,
    key: str,
    call_s: float,
    wide: bool,
) -> list[Row]:
    lm = whole.lm
    sae_id = ctx.assets.sae_id
    # at 1M latents a 1,024-token Decompose is ~30 s on one CPU thread: fewer texts
    n_texts, n_tokens = ctx.count(2 if wide else 8, 2 if wide else 8, 2), ctx.count(128, 128, 32)
    texts = bench_texts(lm.tokenizer, n_texts, n_tokens)
    req = DecomposeRequest(texts=texts, top_k=32, include_reconstruction=True)
    same_dec = _same(decompose(whole, req), decompose(split, req))
    warmup, repeats = (
        1,
        ctx.count(5 if wide else 9, 3 if wide else 5, 2, realistic=5 if wide else 7),
    )
    base_s, cand_s = paired(
        lambda: decompose(whole, req), lambda: decompose(split, req), warmup=warmup, repeats=repeats
    )
    dec_ratio = paired_ratio(base_s, cand_s)
    total = n_texts * n_tokens

    new_tokens = ctx.count(32 if wide else 64, 16 if wide else 32, 8)
    prompt_ids = list(lm.tokenizer(PROMPT)["input_ids"])
    whole.lm = split.lm = replace(lm, stop_token_ids=())
    try:
        sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
        plain = GenerateRequest(prompt_ids=prompt_ids, sampling=sampling)
        ids = prompt_ids + engine_tokens(whole, plain)
        feats = active_features(whole, sae_id, ctx.assets.hook_point, ids, len(prompt_ids))
        steered = GenerateRequest(
            prompt_ids=prompt_ids,
            sampling=sampling,
            interventions=four_interventions(sae_id, feats),
        )
        same_gen = engine_tokens(whole, steered) == engine_tokens(split, steered)
        gen_base, gen_cand = paired(
            lambda: engine_tokens(whole, steered),
            lambda: engine_tokens(split, steered),
            warmup=warmup,
            repeats=repeats,
        )
    finally:
        whole.lm = split.lm = lm
    gen_ratio = paired_ratio(gen_base, gen_cand)
    where = f"{d_sae:,}-latent SAE split {SHARDS} ways ({SHARDS} Serve deployments, 1 CPU each)"
    overhead = f"one empty call to a shard takes {ms_text(call_s)} round trip (median of 50)"
    return [
        Row.judged(
            f"{key}_decompose",
            baseline=rate_text(summarize(rates(base_s, total)), "tok/s"),
            saeserve=rate_text(summarize(rates(cand_s, total)), "tok/s"),
            ratio=dec_ratio.median,
            ratio_text=ratio_text(dec_ratio),
            target=TARGET,
            met=same_dec,
            note=f"{where}; {n_texts} x {n_tokens} tokens with reconstruction error, {repeats}"
            f" pairs; ids and values {'identical' if same_dec else 'DIFFERENT'}; {overhead}.",
        ),
        Row.judged(
            f"{key}_generate",
            baseline=rate_text(summarize(rates(gen_base, new_tokens)), "tok/s"),
            saeserve=rate_text(summarize(rates(gen_cand, new_tokens)), "tok/s"),
            ratio=gen_ratio.median,
            ratio_text=ratio_text(gen_ratio),
            target=TARGET,
            met=same_gen,
            note=f"{where}; ADD, CLAMP, SCALE, ABLATE on active features, {new_tokens} greedy"
            f" tokens, {repeats} pairs (every step calls both shards); tokens"
            f" {'identical' if same_gen else 'DIFFERENT'}.",
        ),
    ]


def measure_wide(ctx: Context) -> list[Row]:
    return measure(ctx, ctx.wide_sae_path, key="sharded_wide", wide=True)
