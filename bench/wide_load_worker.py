"""Child process of the wide-SAE load row: load one SAE as a replica does, report memory.

``python -m bench.wide_load_worker SAE_FOLDER`` loads the SAE with its file's dtype
(``load_configured_sae`` of a default ``SaeSpec``: memory-mapped, lazy), then measures a
``resident_fraction`` sample, pre-touches every page and samples again. It prints one
JSON line: seconds of each step, the weight bytes, and this process's memory from
/proc/self/status before and after (VmRSS, its anonymous and file-backed parts, and the
peak VmHWM), in bytes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def main(folder: str) -> None:
    import torch

    from saeserve.sae.residency import pretouch, resident_fraction
    from saeserve.server.sae_memory import load_configured_sae
    from saeserve.server.settings import SaeSpec

    torch.set_num_threads(1)
    before = status()
    start = time.perf_counter()
    sae = load_configured_sae(SaeSpec(path=Path(folder)), "cpu")
    load_s = time.perf_counter() - start
    loaded = status()
    start = time.perf_counter()
    fraction_loaded = resident_fraction(sae)
    sample_s = time.perf_counter() - start
    start = time.perf_counter()
    pretouch(sae)
    pretouch_s = time.perf_counter() - start
    touched = status()
    result = {
        "load_s": load_s,
        "sample_s": sample_s,
        "pretouch_s": pretouch_s,
        "weight_bytes": sae.weight_bytes(),
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "fraction_loaded": fraction_loaded,
        "fraction_touched": resident_fraction(sae),
        "before": before,
        "loaded": loaded,
        "touched": touched,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
