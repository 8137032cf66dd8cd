"""Index build at width: time per million corpus tokens and peak memory, 32k and 1M latents.

Each row runs ``bench.index_build_worker`` in a fresh process on the realistic model: the
bare forward + ``encode_sparse`` over a corpus slice (the baseline), then ``build_index``
over the same slice, in back-to-back pairs (full: 3, quick: 2). The ratio is the median
over pairs of the build's streaming time over the baseline's (what indexing adds per token); both are also given per million corpus tokens, extrapolated
from the slice (full: 20,000 tokens at 32k, 4,000 at 1M, where each token's encode reads
3 GiB of W_enc; quick: a quarter). The fixed cost per index (finish, labels, postings,
and the promoted/suppressed tokens, timed on 4,096 features and scaled to d_sae) is in
the note. Memory is the peak anonymous RSS (``RssAnon``, sampled every 50 ms: heap and
tensors, not the file-backed pages of the memory-mapped SAE) minus its value right after
loading the model and SAE. A slice fires only part of a 1M SAE, so the 1M row also runs
the accumulator alone on random TopK latents (k 32, uniform ids) until every latent has
fired, and judges the target, <= 6 GiB beside the model and SAE, on the larger of the
two. Load the 1M SAE under ``flock /work/wide.lock`` on a shared machine.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from bench.context import Context, Profile
from bench.report import Row

REPO = Path(__file__).resolve().parent.parent
LOGIT_FEATURES = 4096
TARGET_RATIO = "streaming <= 1.5x bare forward+encode"
TARGET_1M = "peak <= 6 GiB beside model and SAE"
GIB = 2**30


def _worker(*args: object, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.index_build_worker", *map(str, args)]
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"index build worker exited {done.returncode}: {tail[0]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _model_run(ctx: Context, sae: Path, tokens: int) -> dict[str, Any]:
    model = ctx.assets.model_path
    threads = torch.get_num_threads()
    repeats = ctx.count(3, 2, 1, realistic=2)
    return _worker(model, sae, tokens, threads, LOGIT_FEATURES, repeats, timeout=3600)


def _per_million(seconds: float, tokens: int) -> str:
    return f"{seconds / tokens * 1e6:,.0f} s/M tok"


def _texts(r: dict[str, Any]) -> tuple[str, str, float, str]:
    ratio = float(statistics.median(r["ratios"]))
    own = r["peak_anon_mib"] - r["loaded_anon_mib"]
    accumulate = r["stream_finish_peak_anon_mib"] - r["loaded_anon_mib"]
    fixed = r["finish_s"] + r["logit_effects_s"]
    baseline = f"forward+encode {_per_million(r['baseline_s'], r['tokens'])}"
    saeserve = f"index {_per_million(r['stream_s'], r['tokens'])}, peak +{own:,.0f} MiB"
    note = (
        f"{r['tokens']:,} corpus tokens ({r['indexed_tokens']:,} indexed), median of "
        f"{len(r['ratios'])} back-to-back (baseline, build) pairs "
        f"({', '.join(f'{x:.2f}' for x in r['ratios'])}); "
        f"{r['fired']:,} of {r['d_sae']:,} latents fired, state {r['state_bytes'] / 2**20:,.0f} "
        f"MiB; fixed cost per index {fixed:,.0f} s (finish, labels, postings "
        f"{r['finish_s']:,.1f} s; promoted/suppressed tokens {r['logit_effects_s']:,.0f} s, "
        f"timed on {r['logit_features']:,} features and scaled); peak +{accumulate:,.0f} "
        "MiB through streaming and finish, the rest is the promoted/suppressed tokens' "
        f"[features x vocab] chunk (engine.feature_math); peak RssAnon "
        f"{r['peak_anon_mib']:,.0f} MiB, {r['loaded_anon_mib']:,.0f} MiB after loading; "
        f"VmHWM {r['vm_hwm_mib']:,.0f} MiB with the mapped SAE pages"
    )
    return baseline, saeserve, ratio, note


def measure(ctx: Context) -> list[Row]:
    if ctx.profile is not Profile.REALISTIC:
        reason = "realistic profile only (32k and 1M latents on the GPT-2-small-sized model)"
        return [
            Row.not_run("index_build_32k", TARGET_RATIO, reason),
            Row.not_run("index_build_1m", TARGET_1M, reason),
        ]
    rows = []
    r = _model_run(ctx, ctx.assets.sae_path, ctx.count(20_000, 5_000, 500, realistic=5_000))
    baseline, saeserve, ratio, note = _texts(r)
    rows.append(
        Row.judged(
            "index_build_32k",
            baseline=baseline,
            saeserve=saeserve,
            ratio=ratio,
            ratio_text=f"{ratio:.2f}x",
            target=TARGET_RATIO,
            met=ratio <= 1.5,
            note=note,
        )
    )
    wide = ctx.wide_sae_path
    r = _model_run(ctx, wide, ctx.count(4_000, 1_000, 200, realistic=1_000))
    baseline, saeserve, ratio, note = _texts(r)
    tokens = ctx.count(1_000_000, 200_000, 20_000, realistic=200_000)
    s = _worker("synthetic", r["d_sae"], tokens, timeout=3600)
    synthetic_own = s["peak_anon_mib"] - s["base_anon_mib"]
    own = max(r["peak_anon_mib"] - r["loaded_anon_mib"], synthetic_own)
    note += (
        f". Accumulator alone on {s['tokens']:,} random TopK tokens: {s['fired']:,} latents "
        f"fired, state {s['state_bytes'] / GIB:.2f} GiB, peak +{synthetic_own / 1024:.2f} GiB "
        f"RssAnon through finish; {_per_million(s['stream_s'], s['tokens'])} streaming, "
        f"finish {s['finish_s']:.0f} s"
    )
    rows.append(
        Row.judged(
            "index_build_1m",
            baseline=baseline,
            saeserve=saeserve,
            ratio=own / 1024,
            ratio_text=f"peak {own / 1024:.2f} GiB ({ratio:.2f}x time)",
            target=TARGET_1M,
            met=own <= 6 * 1024,
            note=note,
        )
    )
    return rows
