"""Child process of the memory measurement: load the engine, run a mixed load, report RSS.

Run by ``bench.memory`` as ``python -m bench.memory_worker MODEL SAE SECONDS THREADS`` in a
fresh interpreter, so the figures are those of a process that only serves the model (as
a replica does), not of the benchmark driver. The load cycles through Tokenize, batched
Decompose of texts of varied length, and steered Generate with a different feature each
time; a thread samples the resident set size twice a second. The last line printed is a
JSON object: ``samples`` [[seconds, MiB], ...], ``loaded_at_s`` and ``loaded_mib`` (when
the model and SAE were loaded), ``peak_mib`` (VmHWM) and ``operations``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import torch

from bench.assets import bench_texts
from saeserve.engine.decompose import decompose
from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.tokenize import tokenize
from saeserve.engine.types import (
    DecomposeRequest,
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
)

SAMPLE_EVERY_S = 0.5


def proc_status_mib(field: str, pid: int | str = "self") -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def sample_rss(stop: threading.Event, out: list[tuple[float, float]], pid: int | str) -> None:
    start = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - start, proc_status_mib("VmRSS", pid)))
        stop.wait(SAMPLE_EVERY_S)


def mixed_load(served: ServedModel, sae_id: str, seconds: float) -> int:
    lm = served.lm
    texts = bench_texts(lm.tokenizer, 8, 96)
    prompt = list(lm.tokenizer(texts[0][:60])["input_ids"])
    d_sae = served.sae(sae_id).sae.d_sae
    deadline = time.monotonic() + seconds
    ops = 0
    while time.monotonic() < deadline:
        i = ops % len(texts)
        tokenize(lm.tokenizer, texts[i], max_tokens=lm.max_positions)
        batch = [t[: 40 + 20 * ((i + j) % 5)] for j, t in enumerate(texts[: 1 + i % 4])]
        decompose(served, DecomposeRequest(texts=batch, sae_ids=[sae_id], top_k=8))
        steer = Intervention(InterventionMode.ADD, 4.0, sae_id=sae_id, feature=(7 * ops) % d_sae)
        req = GenerateRequest(
            prompt_ids=prompt,
            sampling=SamplingParams(max_new_tokens=16, temperature=0.8, seed=ops),
            interventions=[steer],
            include_baseline=ops % 2 == 0,
        )
        for _ in generate(served, req):
            pass
        ops += 1
    return ops


def main() -> None:
    model, sae, seconds, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    sampler = threading.Thread(target=sample_rss, args=(stop, samples, "self"), daemon=True)
    sampler.start()
    served = ServedModel.load(model, [sae])
    loaded_mib = proc_status_mib("VmRSS")
    loaded_at = time.monotonic() - t0
    ops = mixed_load(served, next(iter(served.saes)), seconds)
    stop.set()
    sampler.join()
    result = {
        "samples": samples,
        "loaded_at_s": loaded_at,
        "loaded_mib": loaded_mib,
        "peak_mib": proc_status_mib("VmHWM"),
        "operations": ops,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
