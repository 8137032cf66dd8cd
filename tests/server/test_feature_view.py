"""GetFeature's promoted and suppressed tokens are the same with and without a feature index
(both come from saeserve.engine.feature_math), in process: no Ray Serve is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from saeserve.engine.feature_math import nearest_features
from saeserve.engine.served_model import ServedModel
from saeserve.insight.index import build_index
from saeserve.model.loader import load_model
from saeserve.model.tiny import TRAINING_TEXT, build_tiny_model
from saeserve.sae.base import InputNorm
from saeserve.server.feature_view import N_LOGIT_TOKENS, N_NEIGHBOURS, FeatureView
from saeserve.v1 import saeserve_pb2 as pb
from tests.engine.conftest import random_sae


def effects(tokens: list[pb.TokenEffect]) -> list[tuple[int, str]]:
    return [(t.token_id, t.token) for t in tokens]


@pytest.mark.parametrize(
    ("family", "input_norm"),
    [("gpt2", InputNorm.SCALE), ("gemma2", InputNorm.NONE), ("gpt_neox", InputNorm.LAYERNORM)],
)
def test_get_feature_tokens_are_the_same_with_and_without_an_index(
    tmp_path: Path, family: str, input_norm: InputNorm
) -> None:
    lm = load_model(build_tiny_model(family, tmp_path / family, n_layers=2, d_model=32))
    served = ServedModel(lm)
    sae = random_sae(32, "resid_post.0", sae_id="s", input_norm=input_norm, seed=4)
    served.add_sae(sae)
    index = build_index(lm, sae, TRAINING_TEXT.split("\n\n"), context_length=16)
    assert index.meta.n_logit_tokens == N_LOGIT_TOKENS
    with_index, without = FeatureView(served, {"s": index}), FeatureView(served, {})
    for feature in range(sae.d_sae):
        a, b = with_index.get("s", feature), without.get("s", feature)
        assert a.has_statistics and not b.has_statistics
        assert len(a.top_promoted) == N_LOGIT_TOKENS
        assert effects(a.top_promoted) == effects(b.top_promoted)
        assert effects(a.top_suppressed) == effects(b.top_suppressed)
        for x, y in [(a.top_promoted, b.top_promoted), (a.top_suppressed, b.top_suppressed)]:
            assert [t.logit_effect for t in x] == pytest.approx([t.logit_effect for t in y])


def test_get_feature_carries_the_index_quantiles_and_the_engine_neighbours(
    tmp_path: Path,
) -> None:
    lm = load_model(build_tiny_model("gpt2", tmp_path / "gpt2", n_layers=2, d_model=32))
    served = ServedModel(lm)
    sae = random_sae(32, "resid_post.0", sae_id="s", seed=5)
    served.add_sae(sae)
    index = build_index(lm, sae, TRAINING_TEXT.split("\n\n"), context_length=16)
    with_index, without = FeatureView(served, {"s": index}), FeatureView(served, {})
    banded = 0
    for feature in range(sae.d_sae):
        a, b = with_index.get("s", feature), without.get("s", feature)
        bands = index.feature(feature).quantiles
        assert [(q.min_activation, q.max_activation) for q in a.quantiles] == [
            pytest.approx((band.low, band.high)) for band in bands
        ]
        for q, band in zip(a.quantiles, bands, strict=True):
            assert [list(c.tokens) for c in q.contexts] == [c.tokens for c in band.contexts]
            assert [c.max_index for c in q.contexts] == [c.max_pos for c in band.contexts]
        banded += bool(bands)
        assert not b.quantiles
        expected = nearest_features(sae, feature, N_NEIGHBOURS)
        for response in (a, b):
            for got, want in (
                (response.decoder_neighbours, expected.decoder),
                (response.encoder_neighbours, expected.encoder),
            ):
                assert [n.feature for n in got] == [n.feature for n in want]
                assert [n.cosine for n in got] == pytest.approx([n.cosine for n in want])
                assert len(got) == N_NEIGHBOURS
    assert banded > 0
