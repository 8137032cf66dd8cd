"""Measurement 2: the same decomposition the way researchers run it, with SAELens.

SAELens and TransformerLens are installed only in a separate bench environment, by
default ``.bench-venv`` at the repository root (override: ``SAESERVE_BENCH_PYTHON``)::

    python -m venv .bench-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > .bench-venv/lib/python3.11/site-packages/zz_main.pth
    .bench-venv/bin/pip install sae-lens transformer-lens

(the ``.pth`` line lets it reuse the main environment's torch and transformers). The
worker (``bench.saelens_worker``) loads the model's weights into a
``HookedSAETransformer`` and the SAE with ``SAE.load_from_disk``, checks that SAELens'
top-k latents equal saeserve's on the 8 x 128-token batch of measurement 1, and times
``run_with_cache_with_saes(tokens, saes=[sae])`` against the engine's ``decompose``,
interleaved. Target: saeserve >= 2x. Without the bench environment the row is "not run".
"""

from __future__ import annotations

import json
import os
import subprocess
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


def bench_python() -> Path | None:
    """The bench environment's interpreter if SAELens imports there, else None."""
    path = Path(os.environ.get("SAESERVE_BENCH_PYTHON", REPO / ".bench-venv" / "bin" / "python"))
    if not path.is_file():
        return None
    probe = subprocess.run(
        [str(path), "-c", "import sae_lens, transformer_lens"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    return path if probe.returncode == 0 else None


def measure(ctx: Context) -> list[Row]:
    target = f">= {TARGET:.1f}x"
    python = bench_python()
    if python is None:
        reason = "no bench environment with sae-lens (see bench/saelens.py for the setup)"
        return [Row.not_run("saelens", target, reason)]
    lm = ctx.served.lm
    n_texts, n_tokens = (2, 32) if ctx.mode is Mode.SMOKE else (8, 128)
    args = {
        "model": str(ctx.assets.model_path),
        "sae": str(ctx.assets.sae_path),
        "sae_id": ctx.assets.sae_id,
        "texts": bench_texts(lm.tokenizer, n_texts, n_tokens),
        "top_k": TOP_K,
        "warmup": ctx.count(3, 2, 1),
        "repeats": ctx.count(15, 7, 3),
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
        return [Row.not_run("saelens", target, f"SAELens worker failed: {tail[0][:200]}")]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    total = int(out["n_tokens"])
    theirs, ours, tuned = out["saelens_s"], out["saeserve_s"], out["saelens_tuned_s"]
    ratio = paired_ratio(theirs, ours)
    agree = float(out["max_value_diff"]) <= TOLERANCE
    tuned_ratio = summarize(tuned).median / summarize(ours).median
    note = (
        f"{n_texts} texts, {total} real tokens, SAE at {out['hook']}. Agreement: top-{TOP_K} "
        f"latent values differ by at most {out['max_value_diff']:.2e} (largest latent "
        f"{out['max_abs_latent']:.2f}; tolerance {TOLERANCE}), {out['id_mismatch']} of "
        f"{total * TOP_K} top-k ids ordered differently (ties). SAELens call as usually written: "
        f"run_with_cache_with_saes(tokens, saes=[sae]) (caches every hook, runs every layer). "
        f"With names_filter=[acts] and stop_at_layer it runs at "
        f"{rate_text(summarize(rates(tuned, total)), 'tok/s')}: saeserve is "
        f"{tuned_ratio:.2f}x that tuned call."
    )
    return [
        Row.judged(
            "saelens",
            baseline=rate_text(summarize(rates(theirs, total)), "tok/s"),
            saeserve=rate_text(summarize(rates(ours, total)), "tok/s"),
            ratio=ratio.median,
            ratio_text=ratio_text(ratio),
            target=target,
            met=ratio.median >= TARGET and agree,
            note=note + ("" if agree else " The two DISAGREE numerically: target not met."),
        )
    ]
