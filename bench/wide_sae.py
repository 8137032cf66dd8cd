"""The 1,048,576-latent SAE's rows: its load (time, memory vs weight bytes) and Decompose
against the bare minimum.

``wide_load``: a fresh child process (``bench.wide_load_worker``) loads the SAE as a model
replica does (``load_configured_sae``, the file's float32, lazy residency) and reports the
load's wall time and how much its resident memory grew against the 6 GiB of weights:
a zero-copy load maps the file and reads only what safetensors' readahead touches.
Target: growth <= 5% of the weight bytes. The note adds what pre-touching every page
costs and one ``mincore`` sample of the resident fraction.

Before the TopK encode read a wide SAE by columns (``Sae.block_shape``), the 64 MiB
budget meant 16-token blocks at 1M latents, each reading all 3 GiB of the encoder: a
quick run measured decompose at 10.5 s a call against the bare minimum's 7.4 s (about
0.7x); column blocks of 256 tokens x 65,536 latents read it once and measured 1.29x.

``wide_decompose``: ``bench.decompose.race`` with this SAE hooked into the realistic
model beside nothing else: the bare minimum (forward to the hook, one encoder matmul, top-k
over all tokens at once) against the engine's whole ``decompose``. Fewer tokens than row 1
(2 texts of 128 tokens), because the bare minimum's one [tokens x d_sae] float32 matrix is
4 MiB a token at this width. Target: >= 0.8x.

Both rows map the 6 GiB file: on a shared machine run ``python -m bench wide`` under
``flock /work/wide.lock``. The demo profile has no 1M-latent SAE (the wide SAE is built
for the realistic model), so there both rows are not run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.assets import bench_texts
from bench.context import Context, Mode, Profile
from bench.decompose import race
from bench.profile import top_ops
from bench.report import Row, rate_text, ratio_text
from bench.stats import paired_ratio, rates, summarize
from saeserve.engine.served_model import ServedModel
from saeserve.sae.formats import load_sae

REPO = Path(__file__).resolve().parent.parent
LOAD_TARGET = 0.05
DECOMPOSE_TARGET = 0.8
TARGETS = {
    "wide_load": f"RSS growth <= {100 * LOAD_TARGET:.0f}% of weights",
    "wide_decompose": f">= {DECOMPOSE_TARGET}x",
}


def measure(ctx: Context) -> list[Row]:
    if ctx.profile is not Profile.REALISTIC or ctx.mode is Mode.SMOKE:
        why = "the 1,048,576-latent SAE (bench.wide) is built for the realistic profile's model"
        return [Row.not_run(key, target, why) for key, target in TARGETS.items()]
    path = ctx.wide_sae_path
    return [load_row(path), decompose_row(ctx, path)]


def load_row(path: Path) -> Row:
    cmd = [sys.executable, "-m", "bench.wide_load_worker", str(path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"wide load worker exited {done.returncode}: {tail[0]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    gib = 2**30
    weights = out["weight_bytes"]
    before, loaded, touched = out["before"], out["loaded"], out["touched"]
    growth = loaded["VmHWM"] - before["VmRSS"]  # peak RSS during the load over the start
    anon = loaded["RssAnon"] - before["RssAnon"]
    ratio = growth / weights
    return Row.judged(
        "wide_load",
        baseline=f"{weights / gib:.2f} GiB of {out['dtype']} weights",
        saeserve=f"{out['load_s']:.2f} s, peak RSS +{growth / 2**20:.0f} MiB",
        ratio=ratio,
        ratio_text=f"{ratio:.3f}x of the weights",
        target=TARGETS["wide_load"],
        met=ratio <= LOAD_TARGET,
        note=(
            f"A fresh process: RSS {before['VmRSS'] / 2**20:.0f} MiB before the load "
            f"(python, torch, saeserve), peak {loaded['VmHWM'] / 2**20:.0f} MiB after; of "
            f"the growth {anon / 2**20:.0f} MiB is anonymous memory (the JumpReLU threshold "
            f"a TopK file lacks is 4 MiB of zeros), the rest file pages safetensors touched. "
            f"Right after the load {100 * out['fraction_loaded']:.0f}% of the weights' pages "
            f"were in the page cache (mincore counts cached pages, mapped or not: the file "
            f"is cached after earlier runs; one sample took {1000 * out['sample_s']:.0f} ms). "
            f"Pre-touching every page (settings residency: pretouch) then took "
            f"{out['pretouch_s']:.1f} s, leaving {100 * out['fraction_touched']:.0f}% "
            f"resident and RSS {touched['VmRSS'] / gib:.2f} GiB, of it "
            f"{touched['RssFile'] / gib:.2f} GiB the file's shared pages (page cache, no copy)."
        ),
    )


def decompose_row(ctx: Context, path: Path) -> Row:
    lm = ctx.served.lm
    served = ServedModel(lm)  # the realistic model, with only the wide SAE
    hooked = served.add_sae(load_sae(path, device=lm.device))
    sae = hooked.sae
    n_texts, n_tokens = 2, 128
    block_tokens, block_latents = sae.block_shape(n_texts * n_tokens)
    texts = bench_texts(lm.tokenizer, n_texts, n_tokens)
    repeats = ctx.count(7, 3, 1, realistic=5)
    r = race(ctx, served, hooked.id, texts, repeats=repeats)
    ratio = paired_ratio(r.base, r.ours)
    met = ratio.median >= DECOMPOSE_TARGET
    note = (
        f"{n_texts} texts, {r.tokens} real tokens, SAE at {hooked.hook_point.name} "
        f"({sae.d_sae} latents, k={sae.cfg.k}, {str(sae.W_enc.dtype).removeprefix('torch.')}, "
        f"encode blocks of {block_tokens} tokens x {block_latents} latents from the "
        f"{sae.encode_block_bytes / 2**20:.0f} MiB budget); {repeats} rounds of the bare "
        f"minimum, decompose and the plain forward, rotated. Top-{r.top_k} values of the two "
        f"differ by at most {r.max_diff:.1e}. The plain full forward runs at "
        f"{rate_text(summarize(rates(r.full, r.tokens)), 'tok/s')}."
    )
    if not met and ctx.mode is not Mode.SMOKE:
        note += f" Profile of decompose: {top_ops(r.engine_decompose)}."
        note += f" Profile of the bare minimum: {top_ops(r.minimum)}."
    return Row.judged(
        "wide_decompose",
        baseline=rate_text(summarize(rates(r.base, r.tokens)), "tok/s"),
        saeserve=rate_text(summarize(rates(r.ours, r.tokens)), "tok/s"),
        ratio=ratio.median,
        ratio_text=ratio_text(ratio),
        target=TARGETS["wide_decompose"],
        met=met and r.max_diff < 1e-3,
        note=note,
    )
