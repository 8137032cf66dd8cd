"""nearest_features against a brute-force float64 numpy cosine on a small random SAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeserve.engine.feature_math import nearest_features
from saeserve.sae.base import Sae, SaeConfig

D_IN, D_SAE, N = 12, 97, 10


def random_sae(seed: int = 0) -> Sae:
    sae = Sae(SaeConfig(d_in=D_IN, d_sae=D_SAE, k=4, hook_point="resid_post.0"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=gen))
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=gen))
    return sae


def brute_force(vectors: np.ndarray, feature: int, n: int) -> tuple[list[int], np.ndarray]:
    """Ids and cosines of the n nearest rows, largest first, lower id first on ties."""
    v = vectors.astype(np.float64)
    norms = np.linalg.norm(v, axis=1)
    cos = v @ v[feature] / np.maximum(norms * norms[feature], 1e-300)
    others = [g for g in range(len(v)) if g != feature]
    ranked = sorted(others, key=lambda g: (-round(cos[g], 9), g))[:n]
    return ranked, cos[ranked]


@pytest.mark.parametrize("chunk", [7, 32, 4096])
@pytest.mark.parametrize("feature", [0, 31, 32, D_SAE - 1])
def test_matches_brute_force_cosine(chunk: int, feature: int) -> None:
    sae = random_sae()
    got = nearest_features(sae, feature, N, chunk=chunk)
    for found, vectors in (
        (got.decoder, sae.W_dec.detach().numpy()),
        (got.encoder, sae.W_enc.detach().numpy().T),
    ):
        ids, cos = brute_force(vectors, feature, N)
        assert [g for g, _ in found] == ids
        np.testing.assert_allclose([c for _, c in found], cos, rtol=1e-5, atol=1e-6)
        assert feature not in [g for g, _ in found]


def test_ties_go_to_the_lower_id_and_the_feature_itself_is_left_out() -> None:
    sae = random_sae(1)
    with torch.no_grad():
        sae.W_dec[40] = sae.W_dec[5]  # an exact copy of feature 5: cosine 1
        for g in (90, 12, 61):  # three copies of one direction: equal cosines
            sae.W_dec[g] = sae.W_dec[3] * 2.0
        sae.W_dec[3] = 0.0  # a zero row: cosine 0
    got = nearest_features(sae, 5, N, chunk=16).decoder
    ids = [g for g, _ in got]
    assert ids[0] == 40 and got[0].cosine == pytest.approx(1.0, abs=1e-6)
    assert 5 not in ids
    copies = [g for g in ids if g in (12, 61, 90)]
    if copies:  # where they rank, they rank together in id order
        start = ids.index(copies[0])
        assert ids[start : start + len(copies)] == sorted(copies)
    ref_ids, _ = brute_force(sae.W_dec.detach().numpy(), 5, N)
    assert ids == ref_ids
    everything = nearest_features(sae, 5, D_SAE, chunk=16).decoder
    assert len(everything) == D_SAE - 1
    assert dict(everything)[3] == 0.0
    tied = [g for g, _ in everything if g in (12, 61, 90)]
    assert tied == [12, 61, 90]
