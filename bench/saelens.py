"""Measurement 2: the same decomposition the way researchers run it, with SAELens.

SAELens and TransformerLens come with the dev extra, so the worker runs in this
interpreter when they import here. Otherwise it uses a separate bench environment,
``.bench-venv`` at the repository root (override: ``SAESERVE_BENCH_PYTHON``)::

    python -m venv .bench-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > .bench-venv/lib/python3.11/site-packages/zz_main.pth
    .bench-venv/bin/pip install sae-lens transformer-lens

The worker (``bench.saelens_worker``, a child process so SAELens' imports stay out of the
bench) loads the model's weights into a ``HookedSAETransformer`` and the SAE with
``SAE.load_from_disk``, checks that SAELens' top-k latents equal saeserve's on the 8 x
128-token batch of measurement 1, and times three calls in rotation: SAELens as usually
written, ``run_with_cache_with_saes(tokens, saes=[sae])`` (every layer, every hook
cached); the engine's ``decompose``; and SAELens tuned, with ``names_filter`` (only the
SAE's latents cached) and ``stop_at_layer`` (no layer past the hook).
Targets: saeserve >= 2x the usual call; against the tuned call, no target (reported).
Without SAELens the rows are "not run".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.assets import bench_texts
from bench.context import Context, Mode
from bench.report import Row, rate_text, ratio_text
from bench.stats import paired_ratio, rates, summarize

REPO = Path(__file__).resolve().parent.parent
TARGET = 2.0
TOP_K = 16
TOLERANCE = 1e-3
"""Largest absolute difference of a top-k latent value that still counts as agreeing."""


def _has_saelens(python: Path) -> bool:
    probe = subprocess.run(
        [str(python), "-c", "import sae_lens, transformer_lens"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    return probe.returncode == 0


def bench_python() -> Path | None:
    """An interpreter where SAELens imports: ``SAESERVE_BENCH_PYTHON``, this one, or
    ``.bench-venv``'s; None if none has it."""
    if env := os.environ.get("SAESERVE_BENCH_PYTHON"):
        candidates = [Path(env)]
    else:
        candidates = [Path(sys.executable), REPO / ".bench-venv" / "bin" / "python"]
    for path in candidates:
        if path.is_file() and _has_saelens(path):
            return path
    return None


def measure(ctx: Context) -> list[Row]:
    target = f">= {TARGET:.1f}x"
    python = bench_python()
    if python is None:
        reason = "sae-lens is not installed (see bench/saelens.py for the setup)"
        return [
            Row.not_run("saelens", target, reason),
            Row.not_run("saelens_tuned", "(no target)", reason),
        ]
    lm = ctx.served.lm
    n_texts, n_tokens = (2, 32) if ctx.mode is Mode.SMOKE else (8, 128)
    args = {
        "model": str(ctx.assets.model_path),
        "sae": str(ctx.assets.sae_path),
        "sae_id": ctx.assets.sae_id,
        "texts": bench_texts(lm.tokenizer, n_texts, n_tokens),
        "top_k": TOP_K,
        "warmup": ctx.count(2, 1, 1, realistic=1),
        "repeats": ctx.count(11, 5, 3, realistic=5),
        "threads": torch.get_num_threads(),
    }
    done = subprocess.run(
        [str(python), "-m", "bench.saelens_worker", json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        reason = f"SAELens worker failed: {tail[0][:200]}"
        return [
            Row.not_run("saelens", target, reason),
            Row.not_run("saelens_tuned", "(no target)", reason),
        ]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    total = int(out["n_tokens"])
    theirs, ours, tuned = out["saelens_s"], out["saeserve_s"], out["saelens_tuned_s"]
    ratio = paired_ratio(theirs, ours)
    agree = float(out["max_value_diff"]) <= TOLERANCE
    tuned_ratio = paired_ratio(tuned, ours)
    note = (
        f"{n_texts} texts, {total} real tokens, SAE at {out['hook']}. Agreement: top-{TOP_K} "
        f"latent values differ by at most {out['max_value_diff']:.2e} (largest latent "
        f"{out['max_abs_latent']:.2f}; tolerance {TOLERANCE}), {out['id_mismatch']} of "
        f"{total * TOP_K} top-k ids ordered differently (ties). SAELens call as usually written: "
        f"run_with_cache_with_saes(tokens, saes=[sae]) (caches every hook, runs every layer); "
        f"{len(ours)} rounds of the three calls, rotated; SAELens run in {python}."
    )
    agree_note = "" if agree else " The two DISAGREE numerically: target not met."
    return [
        Row.judged(
            "saelens",
            baseline=rate_text(summarize(rates(theirs, total)), "tok/s"),
            saeserve=rate_text(summarize(rates(ours, total)), "tok/s"),
            ratio=ratio.median,
            ratio_text=ratio_text(ratio),
            target=target,
            met=ratio.median >= TARGET and agree,
            note=note + agree_note,
        ),
        Row.judged(
            "saelens_tuned",
            baseline=rate_text(summarize(rates(tuned, total)), "tok/s"),
            saeserve=rate_text(summarize(rates(ours, total)), "tok/s"),
            ratio=tuned_ratio.median,
            ratio_text=ratio_text(tuned_ratio),
            target="(no target)",
            met=agree,
            note="run_with_cache_with_saes(tokens, saes=[sae], names_filter=[the SAE's "
            "hook_sae_acts_post], stop_at_layer=hook layer + 1), in the same rotation" + agree_note,
        ),
    ]
