"""Quantile samples of build_index against a by-hand reference, reproducibility, old indexes.

The reference hashes every (feature, context) pair with splitmix64 written over Python
integers (no torch), keeps the pairs with the largest keys among the contexts where the
feature fired, drops its true top contexts, orders the rest by max activation and splits
them with ``numpy.array_split``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from saeserve.insight.index import build_index
from saeserve.insight.store import FeatureIndex
from saeserve.model.loader import LoadedModel
from saeserve.sae.base import Sae
from tests.insight.conftest import D_SAE
from tests.insight.test_build_index import CONTEXT, reference

N_TOP = 3
BANDS = 3
PER_BAND = 2
SEED = 7
M64 = (1 << 64) - 1


def mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def key(seed: int, feature: int, context: int) -> float:
    golden = 0x9E3779B97F4A7C15
    x = mix((feature * golden + seed) & M64)
    x = mix((x + context * golden) & M64)
    return (x >> 11) / 2**53


@pytest.fixture(scope="module")
def sampled(tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]) -> FeatureIndex:
    return build_index(
        tiny_lm,
        tiny_sae,
        corpus,
        context_length=CONTEXT,
        n_top_contexts=N_TOP,
        quantile_bands=BANDS,
        samples_per_band=PER_BAND,
        sample_seed=SEED,
        batch_size=3,  # many merges of the running sample
    )


def test_samples_are_the_largest_keys_outside_the_top_split_by_rank(
    sampled: FeatureIndex, tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]
) -> None:
    ref = reference(tiny_lm, tiny_sae, corpus)
    selective = 0
    for f in range(D_SAE):
        fired = [c for c, d in enumerate(ref.dense) if float(d[:, f].max()) > 0]
        by_value = sorted(fired, key=lambda c: -float(ref.dense[c][:, f].max()))
        top = set(by_value[:N_TOP])
        by_key = sorted(fired, key=lambda c: -key(SEED, f, c))[: BANDS * PER_BAND]
        rest = [c for c in by_key if c not in top]
        rest.sort(key=lambda c: -float(ref.dense[c][:, f].max()))  # stable: key order on ties
        expected = [
            [rest[i] for i in band]
            for band in np.array_split(np.arange(len(rest)), BANDS)
            if band.size
        ]
        bands = sampled.feature(f).quantiles
        assert [len(b.contexts) for b in bands] == [len(b) for b in expected]
        for band, contexts in zip(bands, expected, strict=True):
            maxima = [float(ref.dense[c][:, f].max()) for c in contexts]
            assert band.high == pytest.approx(maxima[0], rel=1e-5)
            assert band.low == pytest.approx(maxima[-1], rel=1e-5)
            for ex, c in zip(band.contexts, contexts, strict=True):
                column = ref.dense[c][:, f]
                assert ex.token_ids == ref.contexts[c]
                assert ex.max_pos == int(column.argmax())
                np.testing.assert_allclose(ex.values, column.numpy(), rtol=1e-5, atol=1e-6)
        selective += len(fired) > BANDS * PER_BAND + N_TOP
    assert selective > 0  # some features fired in more contexts than the sample keeps


def test_same_seed_same_sample_whatever_the_batching(
    sampled: FeatureIndex, tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]
) -> None:
    def build(batch_size: int, seed: int) -> FeatureIndex:
        return build_index(
            tiny_lm,
            tiny_sae,
            corpus,
            context_length=CONTEXT,
            n_top_contexts=N_TOP,
            quantile_bands=BANDS,
            samples_per_band=PER_BAND,
            sample_seed=seed,
            batch_size=batch_size,
        )

    again = build(8, SEED)
    assert all(again.quantiles(f) == sampled.quantiles(f) for f in range(D_SAE))
    other = build(3, SEED + 1)
    assert any(other.quantiles(f) != sampled.quantiles(f) for f in range(D_SAE))


def test_an_index_without_samples_loads_with_none(sampled: FeatureIndex, tmp_path: Path) -> None:
    folder = sampled.save(tmp_path / "old")
    arrays = load_file(folder / "features.safetensors")
    save_file(
        {n: a for n, a in arrays.items() if not n.startswith("sample_")},
        folder / "features.safetensors",
    )
    meta = json.loads((folder / "index.json").read_text())
    for name in ("quantile_bands", "samples_per_band", "sample_seed"):
        del meta[name]
    (folder / "index.json").write_text(json.dumps(meta))
    old = FeatureIndex.load(folder)
    alive = int(np.argmax(sampled.counts))
    assert sampled.feature(alive).quantiles and old.feature(alive).quantiles == []
    assert old.feature(alive).contexts == sampled.feature(alive).contexts
    assert FeatureIndex.load(old.save(tmp_path / "resaved")) == old


def test_no_bands_keeps_no_samples(tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]) -> None:
    index = build_index(tiny_lm, tiny_sae, corpus[:2], context_length=CONTEXT, quantile_bands=0)
    assert index.sample_context.shape == (D_SAE, 0)
    assert all(index.feature(f).quantiles == [] for f in range(D_SAE))
