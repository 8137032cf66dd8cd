"""An SAE as its settings entry says to hold it: dtype, encode budget, residency, and the
metric of how much of it is in memory.

``load_configured_sae`` is how a model replica loads each ``SaeSpec``; ``ResidencySampler``
sets ``saeserve_sae_resident_fraction`` for each of the replica's SAEs every
``interval_s`` seconds on a daemon thread (one ``mincore`` pass per SAE: 0.1-0.2 s at
6 GiB of weights, so under 1% of a core at 30 s), so weights the kernel evicted under
memory pressure show in metrics even while the replica is idle. Ray exports a gauge's
last value at its report interval (10 s) anyway, so sampling on scrape would gain nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import torch

from saeserve.sae.base import MATMUL_ROWS, Sae
from saeserve.sae.residency import make_resident, resident_fraction
from saeserve.server import metrics
from saeserve.server.settings import SaeSpec

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 30.0
"""Seconds between samples of the resident fraction."""


def load_configured_sae(spec: SaeSpec, device: str | torch.device) -> Sae:
    """The SAE of ``spec`` on ``device``: its dtype, encode block budget and residency."""
    from saeserve.sae.formats import load_sae

    start = time.perf_counter()
    sae = load_sae(
        spec.path,
        device=device,
        dtype=None if spec.dtype == "auto" else spec.dtype,
        sae_id=spec.effective_id,
        hook_point=spec.hook_point or None,
    )
    sae.encode_block_bytes = spec.encode_block_bytes
    loaded = time.perf_counter()
    make_resident(sae, spec.residency)
    log.info(
        "SAE %s: %.1f MiB of %s weights loaded in %.2f s; residency %s (%.2f s), "
        "%.0f%% resident; encode blocks of %d tokens x %d latents",
        spec.effective_id,
        sae.weight_bytes() / 2**20,
        str(sae.W_enc.dtype).removeprefix("torch."),
        loaded - start,
        spec.residency,
        time.perf_counter() - loaded,
        100 * resident_fraction(sae),
        *sae.block_shape(MATMUL_ROWS),
    )
    return sae


class ResidencySampler:
    """Sets the resident-fraction gauge of each SAE now and then every ``interval_s``."""

    def __init__(
        self, model: str, saes: Mapping[str, Sae], interval_s: float = SAMPLE_INTERVAL_S
    ) -> None:
        self.model = model
        self.saes = dict(saes)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Set each SAE's gauge to its resident fraction now."""
        for sae_id, sae in self.saes.items():
            fraction = resident_fraction(sae)
            metrics.SAE_RESIDENT_FRACTION.labels(model=self.model, sae=sae_id).set(fraction)

    def start(self) -> None:
        """Sample now, then on a daemon thread until ``stop``."""
        self.sample()
        self._thread = threading.Thread(target=self._run, name="sae-residency", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a failed sample must not end the sampling for good
                log.exception("sampling the SAEs' resident fraction failed")
