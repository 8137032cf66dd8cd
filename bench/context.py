"""What every measurement needs: the assets, the run mode, and the engine loaded once.

``Mode`` scales the work: ``full`` is what docs/BENCHMARKS.md records, ``quick`` shortens
every repeat count and load duration for a look in a minute or two, ``smoke`` is the
seconds-long run the test suite does on a tiny model. ``Profile`` is what runs: the
realistic GPT-2-small-shaped model with a 32k SAE (``bench.realistic``) or the demo. A full
run of the realistic profile on a 2-core CPU would take hours at the demo's repeat counts,
so ``Context.count``/``pick`` take a separate, smaller ``realistic`` figure for full runs
(the notes say how many repeats each row had). ``Context.served`` loads the model and SAE
into a ``ServedModel`` on first use, so measurements that only talk to a server never pay
for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bench.assets import BenchAssets
from saeserve.engine.served_model import ServedModel


class Mode(StrEnum):
    FULL = "full"
    QUICK = "quick"
    SMOKE = "smoke"


class Profile(StrEnum):
    REALISTIC = "realistic"
    DEMO = "demo"


@dataclass
class Context:
    assets: BenchAssets
    mode: Mode
    workdir: Path
    profile: Profile = Profile.DEMO
    notes: list[str] = field(default_factory=list)
    """Run-wide notes for the report (what was skipped and why, profiles)."""
    _served: ServedModel | None = None

    @property
    def served(self) -> ServedModel:
        if self._served is None:
            self._served = ServedModel.load(self.assets.model_path, [self.assets.sae_path])
        return self._served

    @property
    def wide_sae_path(self) -> Path:
        """The 1,048,576-latent SAE for the realistic model (``bench.wide``), built once.

        Rows measured on it belong to the realistic profile; load it under
        ``flock /work/wide.lock`` on a shared machine (6 GiB of weights).
        """
        from bench.wide import wide_sae  # builds the realistic model too: not for the demo

        return wide_sae()

    def pick(
        self, full: float, quick: float, smoke: float, realistic: float | None = None
    ) -> float:
        """A count or duration for the current mode (``realistic``: a full realistic run)."""
        if self.mode is Mode.FULL and self.profile is Profile.REALISTIC and realistic is not None:
            return realistic
        return {Mode.FULL: full, Mode.QUICK: quick, Mode.SMOKE: smoke}[self.mode]

    def count(self, full: int, quick: int, smoke: int, realistic: int | None = None) -> int:
        return int(self.pick(full, quick, smoke, realistic))
