"""FeatureIndex save/load round trip, the per-feature query and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saeserve.errors import InvalidArgument, NotFound
from saeserve.insight.index import build_index
from saeserve.insight.store import FeatureIndex
from saeserve.model.loader import LoadedModel
from saeserve.sae.base import Sae
from tests.insight.conftest import D_SAE


@pytest.fixture(scope="module")
def index(tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]) -> FeatureIndex:
    return build_index(tiny_lm, tiny_sae, corpus, context_length=16, n_top_contexts=3)


def test_round_trip_is_equal(index: FeatureIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "explanations.jsonl",
        "features.safetensors",
        "index.json",
        "postings.json",
        "postings.safetensors",
        "tokens.json",
    ]
    loaded = FeatureIndex.load(tmp_path / "idx")
    assert loaded == index
    for f in range(D_SAE):
        assert loaded.feature(f) == index.feature(f)
    # the equality is not vacuous
    loaded.value[0] += 1
    assert loaded != index


def test_contexts_are_stored_once_and_token_strings_once(index: FeatureIndex) -> None:
    rows = np.concatenate([index.top_context.ravel(), index.sample_context.ravel()])
    assert index.context_tokens.shape[0] == len(np.unique(rows[rows >= 0]))  # only referenced
    assert index.context_tokens.dtype == np.uint16  # vocabulary < 65536
    ids = set(index.promoted_ids.ravel().tolist()) | set(index.suppressed_ids.ravel().tolist())
    for row, length in enumerate(index.context_lengths.tolist()):
        ids |= set(index.context_tokens[row, :length].tolist())
    assert set(index.token_strings) == ids


def test_feature_info_fields(index: FeatureIndex) -> None:
    f = int(np.argmax(index.counts))
    info = index.feature(f)
    assert info.feature == f
    assert sum(info.histogram_counts) == index.counts[f]
    assert info.max_activation == max(c.max_value for c in info.contexts)
    assert info.contexts[0].max_value >= info.contexts[-1].max_value
    for ctx in info.contexts:
        assert ctx.values[ctx.max_pos] == pytest.approx(ctx.max_value)
        assert len(ctx.tokens) == len(ctx.values) == len(ctx.token_ids)
    assert info.promoted[0].effect >= info.promoted[-1].effect
    assert info.suppressed[0].effect <= info.suppressed[-1].effect
    token, effect, token_id = info.promoted[0]
    assert token == index.token_strings[token_id] and effect == info.promoted[0].effect


@pytest.mark.parametrize("bad", [-1, D_SAE, D_SAE + 100])
def test_feature_out_of_range_is_not_found(index: FeatureIndex, bad: int) -> None:
    with pytest.raises(NotFound, match=f"feature: {bad} is outside \\[0, d_sae {D_SAE}\\)"):
        index.feature(bad)


def test_load_errors(index: FeatureIndex, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"index: no index\.json"):
        FeatureIndex.load(tmp_path / "missing")
    folder = index.save(tmp_path / "v")
    meta = json.loads((folder / "index.json").read_text())
    meta["format_version"] = 99
    (folder / "index.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidArgument, match="format_version 99"):
        FeatureIndex.load(folder)
