"""Measurement 7 (engine part): resident memory of a process serving the model under load.

A fresh child process (``bench.memory_worker``) loads the model and SAE as a replica does
and runs a mixed Tokenize / Decompose / steered Generate load for 60 s (quick: 10 s,
smoke: 3 s) while its RSS is sampled. The first quarter of the load (at least 2 s) is
warm-up; the row reports RSS after warm-up, the peak, and the largest growth after
warm-up. Target: flat, i.e. growth <= 5% of the RSS after warm-up. ``judge_rss`` is
shared with the replica measurement in ``bench.service``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.context import Context
from bench.report import Row

REPO = Path(__file__).resolve().parent.parent
MAX_GROWTH = 0.05


def judge_rss(
    key: str,
    samples: Sequence[tuple[float, float]],
    *,
    load_start_s: float,
    seconds: float,
    peak_mib: float,
    detail: str,
) -> Row:
    """A memory row from (seconds, MiB) samples of a load that began at ``load_start_s``."""
    warm_end = load_start_s + max(2.0, seconds / 4)
    warm = [m for t, m in samples if load_start_s <= t <= warm_end]
    after = [m for t, m in samples if t > warm_end]
    target = f"growth <= {100 * MAX_GROWTH:.0f}% after warm-up"
    if not warm or not after:
        return Row.not_run(key, target, f"too few RSS samples ({len(samples)})")
    base = warm[-1]
    growth = max(after) - base
    ratio = max(after) / base
    return Row.judged(
        key,
        baseline=f"{base:.0f} MiB after warm-up",
        saeserve=f"peak {peak_mib:.0f} MiB, end {after[-1]:.0f} MiB",
        ratio=ratio,
        ratio_text=f"{ratio:.3f}x ({growth:+.1f} MiB)",
        target=target,
        met=math.isfinite(ratio) and growth <= MAX_GROWTH * base,
        note=f"{detail}; RSS sampled every 0.5 s, {len(after)} samples after warm-up.",
    )


def measure(ctx: Context) -> list[Row]:
    seconds = ctx.pick(60, 10, 3)
    cmd = [
        sys.executable,
        "-m",
        "bench.memory_worker",
        str(ctx.assets.model_path),
        str(ctx.assets.sae_path),
        str(seconds),
        str(torch.get_num_threads()),
    ]
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + 300, check=False
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory worker exited {done.returncode}: {tail[0]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    samples = [(float(t), float(m)) for t, m in out["samples"]]
    detail = (
        f"{seconds:.0f} s of mixed Tokenize / Decompose (1-4 texts) / steered Generate "
        f"(16 tokens, half with baseline) in a fresh process: {out['operations']} rounds; "
        f"{out['loaded_mib']:.0f} MiB right after loading"
    )
    return [
        judge_rss(
            "memory_engine",
            samples,
            load_start_s=float(out["loaded_at_s"]),
            seconds=seconds,
            peak_mib=float(out["peak_mib"]),
            detail=detail,
        )
    ]
