"""Child process of the index-build measurement: one build, timed, with its memory sampled.

``python -m bench.index_build_worker MODEL SAE TOKENS THREADS LOGIT_FEATURES REPEATS`` loads the
model and the SAE (memory-mapped), then over the first TOKENS corpus tokens of the
realistic corpus (``bench.realistic.corpus_documents``, contexts of 64 tokens, batches of
16, as ``saeserve index`` cuts them):
1. the baseline: forward to the hook point + ``Sae.encode_sparse`` of every batch, nothing
   kept;
2. ``build_index`` with its defaults, its progress callback marking where streaming ends;
REPEATS pairs of the two back to back (all but the last build stopped after streaming),
so load from other processes lands on both; each pair gives a ratio.
In the last build
   The promoted/suppressed tokens (``logit_effects``, a fixed cost per SAE: one
   [vocab x d_model] product per feature) are computed for the first LOGIT_FEATURES
   features only and repeated to d_sae, their time scaled to all features.
A thread samples ``RssAnon`` (anonymous resident memory: heap and tensors, not the
file-backed pages of the memory-mapped SAE) every 50 ms. The build's own memory is its
peak minus the value right after loading. ``python -m bench.index_build_worker synthetic
D_SAE TOKENS`` streams random TopK latents (k 32, uniform ids, gamma values) into a
``FeatureAccumulator`` and finishes it, with no model: the state when every feature
fires. The last line printed is a JSON object of the figures.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

import numpy as np
import torch

from bench.memory_worker import proc_status_mib

SAMPLE_EVERY_S = 0.05
CONTEXT, BATCH = 64, 16


class AnonPeak:
    """Samples RssAnon in a thread; ``peak`` in MiB since ``reset``."""

    def __init__(self) -> None:
        self.peak = proc_status_mib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status_mib("RssAnon"))
            self._stop.wait(SAMPLE_EVERY_S)

    def reset(self) -> float:
        self.peak = proc_status_mib("RssAnon")
        return self.peak

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, proc_status_mib("RssAnon"))


def model_run(
    model: str, sae_path: str, tokens: int, logit_features: int, repeats: int
) -> dict[str, Any]:
    import saeserve.insight.index as index_module
    from bench.realistic import corpus_documents
    from saeserve.engine.feature_math import logit_effects
    from saeserve.engine.padding import pad_token_ids
    from saeserve.insight.index import _batches, build_index, iter_contexts
    from saeserve.model.hookpoints import forward_until, resolve_hook_point
    from saeserve.model.loader import load_model
    from saeserve.sae.formats import load_sae

    sampler = AnonPeak()
    lm = load_model(model)
    sae = load_sae(sae_path)
    texts = corpus_documents()
    hook = resolve_hook_point(sae.cfg.hook_point, lm.layout, lm.model)

    def baseline(limit: int) -> tuple[float, int]:
        start, n = time.perf_counter(), 0
        with torch.inference_mode():
            for batch in _batches(iter_contexts(lm.tokenizer, texts, CONTEXT, limit), BATCH):
                ids, mask = pad_token_ids(batch, pad_id=lm.pad_token_id, width=CONTEXT)
                width = max(len(c) for c in batch)  # as build_index: no all-padding columns
                ids, mask = ids[:, :width], mask[:, :width]
                got: list[torch.Tensor] = []
                forward_until(
                    lm, {hook: got.append}, stop_after=hook, input_ids=ids, attention_mask=mask
                )
                rows, pos = mask.bool().nonzero(as_tuple=True)
                sae.encode_sparse(got[-1][rows, pos], k=sae.cfg.k)
                n += int(mask.sum())
        return time.perf_counter() - start, n

    baseline(CONTEXT * BATCH)  # warm-up: first-touch of the weights

    class Streamed(Exception):
        """Raised where the promoted/suppressed tokens start: a streaming-only build."""

    def stream_only(*args: Any, **kw: Any) -> Any:
        raise Streamed

    # pairs (baseline, streaming build) back to back, so load from elsewhere hits both
    ratios: list[float] = []
    for _ in range(repeats - 1):
        base_s, _ = baseline(tokens)
        index_module.logit_effects = stream_only  # type: ignore[assignment]
        start = time.perf_counter()
        ends: list[float] = []
        with contextlib.suppress(Streamed):
            build_index(
                lm,
                sae,
                texts,
                max_tokens=tokens,
                progress=lambda _, e=ends: e.append(time.perf_counter()),
            )
        ratios.append((ends[-1] - start) / base_s)
    baseline_s, n_base = baseline(tokens)

    logit_s: list[float] = []
    stream_peak: list[float] = []

    def sliced_effects(lm_: Any, sae_: Any, n: int, **kw: Any) -> Any:
        stream_peak.append(sampler.peak)  # streaming and finish are done
        t = time.perf_counter()
        part = logit_effects(lm_, sae_, n, features=range(min(logit_features, sae_.d_sae)), **kw)
        logit_s.append(time.perf_counter() - t)
        reps = -(-sae_.d_sae // part.promoted_ids.shape[0])
        names = ("promoted_ids", "promoted", "suppressed_ids", "suppressed")
        tiled = {k: np.tile(getattr(part, k), (reps, 1))[: sae_.d_sae] for k in names}
        return type(part)(**tiled)

    index_module.logit_effects = sliced_effects  # type: ignore[assignment]
    streamed: list[tuple[float, int, int]] = []
    loaded = sampler.reset()
    start = time.perf_counter()
    index = build_index(
        lm,
        sae,
        texts,
        max_tokens=tokens,
        progress=lambda p: streamed.append((time.perf_counter(), p.fired, p.state_bytes)),
    )
    total_s = time.perf_counter() - start
    peak = sampler.stop()
    stream_s = streamed[-1][0] - start
    ratios.append(stream_s / baseline_s)
    scale = sae.d_sae / min(logit_features, sae.d_sae)
    return {
        "d_sae": sae.d_sae,
        "tokens": n_base,
        "indexed_tokens": index.meta.n_tokens,
        "baseline_s": baseline_s,
        "ratios": ratios,
        "stream_s": stream_s,
        "finish_s": total_s - stream_s - logit_s[0],
        "logit_effects_s": logit_s[0] * scale,
        "logit_features": min(logit_features, sae.d_sae),
        "fired": streamed[-1][1],
        "state_bytes": streamed[-1][2],
        "loaded_anon_mib": loaded,
        "peak_anon_mib": peak,
        "stream_finish_peak_anon_mib": stream_peak[0],
        "vm_hwm_mib": proc_status_mib("VmHWM"),
    }


def synthetic_run(d_sae: int, tokens: int) -> dict[str, Any]:
    from saeserve.insight.accumulator import FeatureAccumulator

    sampler = AnonPeak()
    base = sampler.reset()
    rng = np.random.default_rng(0)
    acc = FeatureAccumulator(
        d_sae, n_top_contexts=20, context_length=CONTEXT, histogram_bins=32, n_samples=15
    )
    n_tok, k = CONTEXT * BATCH, 32
    rows, pos = np.arange(n_tok) // CONTEXT, np.arange(n_tok) % CONTEXT
    ids = rng.integers(0, 50257, (BATCH, CONTEXT)).astype(np.int32)
    lengths = np.full(BATCH, CONTEXT, np.int16)
    start = time.perf_counter()
    for _ in range(tokens // n_tok):
        indices = rng.integers(0, d_sae, (n_tok, k))
        values = rng.gamma(2.0, 1.0, (n_tok, k)).astype(np.float32)
        acc.add(values, indices, rows, pos, BATCH, ids, lengths)
    stream_s = time.perf_counter() - start
    fired, state = acc.n_fired, acc.nbytes
    stats = acc.finish()
    finish_s = time.perf_counter() - start - stream_s
    del acc, stats
    return {
        "d_sae": d_sae,
        "tokens": tokens,
        "fired": fired,
        "state_bytes": state,
        "stream_s": stream_s,
        "finish_s": finish_s,
        "base_anon_mib": base,
        "peak_anon_mib": sampler.stop(),
    }


def main() -> None:
    if sys.argv[1] == "synthetic":
        out = synthetic_run(int(sys.argv[2]), int(sys.argv[3]))
    else:
        torch.set_num_threads(int(sys.argv[4]))
        args = sys.argv[1:]
        out = model_run(args[0], args[1], int(args[2]), int(args[4]), int(args[5]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
