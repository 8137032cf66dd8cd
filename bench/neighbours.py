"""Measurement 11: GetFeature's neighbours of one feature of a 1,048,576-latent SAE against a
chunked matmul by hand.

``nearest_features`` ranks every other feature by the cosine of its decoder row, and of its
encoder column, with the feature's own, in chunks of latents (never a [d_sae x d_sae]
matrix), keeping a running top 10. The by-hand baseline does the same arithmetic the
plainest way that still fits in memory: per matrix, one [chunk, d] @ [d] product and row
norms per chunk written into a [d_sae] cosine vector, then one ``torch.topk``. Both read
the SAE ``bench.wide`` builds for the realistic model (6 GiB of float32 weights), so the
row runs on the realistic profile only. Target: >= 0.8x the baseline.
"""

from __future__ import annotations

import math

import torch

from bench.context import Context, Mode, Profile
from bench.report import Row, ms_text, ratio_text
from bench.stats import interleaved, paired_ratio, summarize
from saeserve.engine.feature_math import LATENTS_PER_CHUNK, nearest_features
from saeserve.sae.formats import load_sae

TARGET = 0.8
N = 10  # GetFeature's neighbours per list


def by_hand(vectors: torch.Tensor, feature: int, n: int) -> tuple[list[int], list[float]]:
    """Top n rows of ``vectors`` [d_sae, d] by cosine with row ``feature`` (left out)."""
    tiny = torch.finfo(torch.float32).tiny
    query = vectors[feature] / vectors[feature].norm().clamp_min(tiny)
    cosine = torch.empty(vectors.shape[0])
    for start in range(0, vectors.shape[0], LATENTS_PER_CHUNK):
        block = vectors[start : start + LATENTS_PER_CHUNK]
        cosine[start : start + len(block)] = (block @ query) / block.norm(dim=1).clamp_min(tiny)
    cosine[feature] = -math.inf
    top = torch.topk(cosine, n)
    return top.indices.tolist(), top.values.tolist()


def measure(ctx: Context) -> list[Row]:
    if ctx.profile is not Profile.REALISTIC or ctx.mode is Mode.SMOKE:
        reason = "the 1M-latent SAE (bench.wide) is built for the realistic profile's model"
        return [Row.not_run("neighbours_wide", f">= {TARGET:.2f}x", reason)]
    sae = load_sae(ctx.wide_sae_path)
    feature = 123_457
    w_dec, w_enc = sae.W_dec.detach(), sae.W_enc.detach()

    def ours() -> None:
        nearest_features(sae, feature, N)

    def baseline() -> None:
        by_hand(w_dec, feature, N)
        by_hand(w_enc.T, feature, N)

    got = nearest_features(sae, feature, N)
    want_ids, want_cos = by_hand(w_dec, feature, N)
    same = [n.feature for n in got.decoder] == want_ids and all(
        abs(n.cosine - c) < 1e-5 for n, c in zip(got.decoder, want_cos, strict=True)
    )
    same = same and [n.feature for n in got.encoder] == by_hand(w_enc.T, feature, N)[0]
    repeats = ctx.count(7, 3, 1)
    base, cand = interleaved([baseline, ours], warmup=1, repeats=repeats)
    ratio = paired_ratio(base, cand)
    note = (
        f"Feature {feature} of {sae.d_sae:,} latents (d_in {sae.d_in}, float32, "
        f"{2 * sae.d_sae * sae.d_in * 4 / 2**30:.0f} GiB of decoder and encoder weights), "
        f"top {N} by decoder and by encoder cosine; {repeats} rounds, rotated, after one "
        f"warm-up each. The two agree on every id{'' if same else ' (NOT: see the run)'}."
    )
    return [
        Row.judged(
            "neighbours_wide",
            baseline=ms_text(summarize(base).median),
            saeserve=ms_text(summarize(cand).median),
            ratio=ratio.median,
            ratio_text=ratio_text(ratio),
            target=f">= {TARGET:.2f}x",
            met=ratio.median >= TARGET and same,
            note=note,
        )
    ]
