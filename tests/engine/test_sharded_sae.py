"""A sharded SAE (in-process shards) gives the unsharded SAE's answers: encode, Decompose,
steered Generate in every mode, tracked features, neighbours, logit effects, the index.

The reference is the same SAE unsplit; the precondition that makes the identity exact
(no two of a token's k+1 largest pre-activations are equal) is checked on the data, and a
test with duplicate latents shows how ties are broken.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saeserve.engine.decompose import decompose
from saeserve.engine.feature_math import feature_token_effects, nearest_features
from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.sharded_sae import ShardedSae, split_in_process
from saeserve.engine.types import (
    DecomposeRequest,
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
    TrackedFeature,
    Variant,
)
from saeserve.errors import InvalidArgument
from saeserve.insight.index import build_index
from saeserve.sae.base import Activation, InputNorm, Sae
from tests.engine.conftest import random_sae

D_SAE = 8192
SPLITS = [
    {"shards": 1},
    {"shards": 2},
    {"shards": 3},
    {"ranges": [[0, 100], [100, 5000], [5000, D_SAE]]},  # uneven
]
SAES = {  # (activation, input norm, k)
    "topk": (Activation.TOPK, InputNorm.NONE, 32),
    "topk_ln": (Activation.TOPK, InputNorm.LAYERNORM, 16),
    "jumprelu": (Activation.JUMPRELU, InputNorm.SCALE, None),
    "relu": (Activation.RELU, InputNorm.NONE, None),
}
TEXTS = ["The cat sat on the mat.", "Once upon a time, in a land far away, a river ran."]
M = InterventionMode


def _sae(name: str, d_in: int) -> Sae:
    act, norm, k = SAES[name]
    sae = random_sae(
        d_in, "resid_post.1", sae_id=name, activation=act, k=k, input_norm=norm, seed=5, d_sae=D_SAE
    )
    return sae.eval().requires_grad_(False)


def _pair(path: Path, name: str, split: dict) -> tuple[ServedModel, ServedModel]:
    """The same model twice: once with the SAE whole, once split."""
    whole, sharded = ServedModel.load(path), ServedModel.load(path)
    sae = _sae(name, whole.lm.layout.d_model)
    whole.add_sae(sae)
    sharded.add_sae(split_in_process(sae, **split))
    return whole, sharded


def _check_distinct_top(sae: Sae, x: torch.Tensor) -> None:
    """The precondition of exact identity: the k+1 largest pre-activations differ."""
    pre = sae.pre_activations(sae.normalize(x)[0] - sae.b_dec * sae.cfg.apply_b_dec_to_input)
    top = torch.topk(pre, (sae.cfg.k or 0) + 1).values
    assert (top[:, :-1] != top[:, 1:]).all()


@pytest.mark.parametrize("split", SPLITS, ids=str)
@pytest.mark.parametrize("name", list(SAES))
def test_encode_sparse_matches_unsharded(name: str, split: dict) -> None:
    sae = _sae(name, 48)
    x = torch.randn(70, 48, generator=torch.Generator().manual_seed(1)) * 3
    if sae.is_topk:
        _check_distinct_top(sae, x)
    feats = torch.tensor([0, 99, 100, 4999, 5000, 4096, D_SAE - 1])
    sharded = split_in_process(sae, **split)
    for kw in (
        {"k": 24, "features": feats, "reconstruct": True, "count_fires": True},
        {"k": 0, "features": feats},  # steering and tracking read features alone
        {"k": 8, "block_bytes": 4096},  # many blocks on every shard
    ):
        want, got = sae.encode_sparse(x, **kw), sharded.encode_sparse(x, **kw)
        active = want.values > 0
        assert torch.equal(active, got.values > 0)
        assert torch.equal(want.indices[active], got.indices[active])
        np.testing.assert_allclose(got.values, want.values, rtol=0, atol=1e-5)
        for a, b in ((want.features, got.features), (want.reconstruction, got.reconstruction)):
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)
        if want.fire_counts is not None:
            assert got.fire_counts is not None
            assert torch.equal(want.fire_counts, got.fire_counts)


def test_ties_go_to_the_lower_id() -> None:
    """Latent 7 and its duplicate 6000 (on another shard) have equal pre-activations; the
    merge keeps 7 first, and both have the same value."""
    sae = _sae("topk", 48)
    with torch.no_grad():
        sae.W_enc[:, 6000] = sae.W_enc[:, 7]
        sae.b_enc[6000] = sae.b_enc[7] = 50.0  # certainly among the top k
    x = torch.randn(20, 48, generator=torch.Generator().manual_seed(2))
    got = split_in_process(sae, shards=2).encode_sparse(x)
    for row_v, row_i in zip(got.values.tolist(), got.indices.tolist(), strict=True):
        i, j = row_i.index(7), row_i.index(6000)
        assert i < j and row_v[i] == row_v[j]


@pytest.mark.parametrize("split", SPLITS, ids=str)
@pytest.mark.parametrize("name", ["topk", "topk_ln", "jumprelu"])
def test_decompose_matches_unsharded(gpt2_path: Path, name: str, split: dict) -> None:
    whole, sharded = _pair(gpt2_path, name, split)
    req = DecomposeRequest(
        texts=TEXTS, top_k=20, feature_ids=[3, 100, 5000, 8000], include_reconstruction=True
    )
    want, got = decompose(whole, req), decompose(sharded, req)
    for tw, tg in zip(want.texts, got.texts, strict=True):
        (w,), (g,) = tw.saes, tg.saes
        np.testing.assert_array_equal(g.top_ids, w.top_ids)
        np.testing.assert_allclose(g.top_values, w.top_values, rtol=0, atol=1e-5)
        np.testing.assert_allclose(g.dense_values, w.dense_values, rtol=0, atol=1e-5)
        assert w.token_mse is not None and g.token_mse is not None
        np.testing.assert_allclose(g.token_mse, w.token_mse, rtol=1e-4, atol=1e-7)
        assert g.explained_variance == pytest.approx(w.explained_variance, rel=1e-5)


def _steered(served: ServedModel, ivs: list[Intervention], track: list[TrackedFeature]):
    ids = served.lm.tokenizer(TEXTS[1])["input_ids"]
    req = GenerateRequest(ids, SamplingParams(max_new_tokens=12, temperature=0), ivs, track=track)
    events = [e for e in generate(served, req) if e.variant is Variant.STEERED]
    return [e.token_id for e in events], np.array([e.tracked for e in events])


@pytest.mark.parametrize("split", SPLITS[1:], ids=str)
@pytest.mark.parametrize("name", ["topk", "topk_ln", "jumprelu"])
def test_steered_generate_matches_unsharded(gpt2_path: Path, name: str, split: dict) -> None:
    whole, sharded = _pair(gpt2_path, name, split)
    # the feature most active on the prompt's last token, so CLAMP/SCALE/ABLATE act
    dec = decompose(whole, DecomposeRequest(texts=[TEXTS[1]], top_k=2))
    top = int(dec.texts[0].saes[0].top_ids[-1, 0])
    other = 5000 if top < 5000 else 50  # on another shard
    track = [TrackedFeature(name, top), TrackedFeature(name, other)]
    for ivs in (
        [Intervention(M.ADD, 8.0, sae_id=name, feature=other)],
        [Intervention(M.CLAMP, 6.0, sae_id=name, feature=top)],
        [Intervention(M.SCALE, 4.0, sae_id=name, feature=top)],
        [Intervention(M.ABLATE, 0.0, sae_id=name, feature=top)],
        [  # several at once, on two shards
            Intervention(M.CLAMP, 3.0, sae_id=name, feature=other),
            Intervention(M.SCALE, 0.5, sae_id=name, feature=top),
        ],
    ):
        want_tokens, want_tracked = _steered(whole, ivs, track)
        got_tokens, got_tracked = _steered(sharded, ivs, track)
        assert got_tokens == want_tokens, ivs
        np.testing.assert_allclose(got_tracked, want_tracked, rtol=0, atol=1e-4)
    assert (
        _steered(whole, [], [])[0]
        != _steered(whole, [Intervention(M.ADD, 40.0, sae_id=name, feature=other)], [])[0]
    )  # the steering does change the text, so equal tokens above mean something


@pytest.mark.parametrize("split", SPLITS[1:], ids=str)
def test_feature_math_matches_unsharded(gpt2_path: Path, split: dict) -> None:
    whole, sharded = _pair(gpt2_path, "topk", split)
    sae, sh = whole.saes["topk"].sae, sharded.saes["topk"].sae
    assert isinstance(sh, ShardedSae)
    for feature in (0, 99, 100, 5000, D_SAE - 1):
        assert nearest_features(sh, feature, 10) == nearest_features(sae, feature, 10)
        assert feature_token_effects(sharded.lm, sh, feature, 5) == feature_token_effects(
            whole.lm, sae, feature, 5
        )
    with pytest.raises(InvalidArgument):
        sh.decoder_rows(torch.tensor([D_SAE]))


def test_index_matches_unsharded(gpt2_path: Path) -> None:
    whole, sharded = _pair(gpt2_path, "topk", {"ranges": [[0, 3000], [3000, D_SAE]]})
    corpus = TEXTS * 3
    kw = {"context_length": 16, "n_logit_tokens": 4}
    want = build_index(whole.lm, whole.saes["topk"].sae, corpus, **kw)
    got = build_index(sharded.lm, sharded.saes["topk"].sae, corpus, **kw)
    for name in ("counts", "max_activation", "top_context", "promoted_ids", "suppressed_ids"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    np.testing.assert_allclose(got.mean_activation, want.mean_activation, rtol=1e-6)


def test_ranges_must_tile_the_latents() -> None:
    sae = _sae("topk", 48)
    for ranges in ([[0, 100], [200, D_SAE]], [[0, 100], [100, 8000]], [[0, 0], [0, D_SAE]]):
        with pytest.raises(InvalidArgument, match=r"sharding\.ranges"):
            split_in_process(sae, ranges=ranges)
