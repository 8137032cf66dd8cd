"""Settings entries of SAEs: dtype, encode budget and residency applied at load, the
resident-fraction gauge, and an unknown dtype refused naming the field.
Run: ``pytest tests/server/test_sae_memory.py -q``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from saeserve.sae.formats import write_sae
from saeserve.sae.residency import resident_fraction
from saeserve.server import metrics
from saeserve.server.sae_memory import ResidencySampler, load_configured_sae
from saeserve.server.settings import ModelSpec, SaeSpec, ServerSettings
from tests.sae.test_sae_memory import D_SAE, random_sae


def test_spec_sets_dtype_budget_and_residency(tmp_path: Path) -> None:
    folder = write_sae(random_sae(), tmp_path / "sae")
    spec = SaeSpec(path=folder, dtype="bfloat16", residency="pretouch", encode_block_bytes=3 << 20)
    sae = load_configured_sae(spec, "cpu")
    assert sae.W_enc.dtype is torch.bfloat16 and sae.cfg.id == "sae"
    assert sae.encode_block_bytes == 3 << 20
    assert sae.block_shape(100) == ((3 << 20) // (D_SAE * 4), D_SAE)
    assert resident_fraction(sae) == 1.0


def test_defaults_keep_the_files_dtype(tmp_path: Path) -> None:
    folder = write_sae(random_sae(torch.float16), tmp_path / "sae")
    spec = SaeSpec(path=folder)
    assert (spec.dtype, spec.residency, spec.encode_block_bytes) == ("auto", "lazy", 64 << 20)
    assert load_configured_sae(spec, "cpu").W_enc.dtype is torch.float16


def test_unknown_dtype_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"models\.0\.saes\.0\.dtype") as e:
        ServerSettings.load(
            models=[{"name": "m", "path": "/m", "saes": [{"path": "/s", "dtype": "float64"}]}]
        )
    assert "'bfloat16'" in str(e.value)
    with pytest.raises(ValidationError, match="residency"):
        ModelSpec(name="m", path=Path("/m"), saes=[SaeSpec(path=Path("/s"), residency="pin")])  # type: ignore[arg-type]


def test_resident_fraction_gauge_is_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_backend", None)
    registry = metrics.use_prometheus()
    folder = write_sae(random_sae(), tmp_path / "sae")
    sae = load_configured_sae(SaeSpec(path=folder, residency="pretouch"), "cpu")
    ResidencySampler("m", {"s1": sae}).sample()
    labels = {"model": "m", "sae": "s1"}
    assert registry.get_sample_value("saeserve_sae_resident_fraction", labels) == 1.0
