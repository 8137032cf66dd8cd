"""feature_math's logit effects against each family's own final norm and unembedding.

The reference never uses saeserve's norm knowledge: it differentiates the real HF final
norm module followed by the real output head (``torch.func.jvp``) at a point x where the
linearisation in feature_math's docstring is exact (x centred, orthogonal to the direction,
RMS 1), and it maps each feature into the model's space with the SAE's own
``normalize`` / ``decode`` / ``denormalize``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from saeserve.engine import feature_math
from saeserve.engine.feature_math import feature_token_effects, logit_effects, unembed_directions
from saeserve.model.architectures import NormDirectionMap
from saeserve.model.loader import LoadedModel, load_model
from saeserve.model.tiny import TINY_FAMILIES, build_tiny_model
from saeserve.sae.base import InputNorm, Sae
from tests.engine.conftest import random_sae
from tests.model.conftest import CASES

D_MODEL = 32
N = 10
# family -> HF module path of the final norm (the model tests' independent table)
FINAL_NORM = {case.family: case.final_norm for case in CASES.values()}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("feature_math")
    return {
        f: build_tiny_model(f, root / f, n_layers=1, d_model=D_MODEL, seed=3) for f in TINY_FAMILIES
    }


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def lm(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(tiny_models[request.param], name=request.param)


def norm_then_head_jvp(lm: LoadedModel, u: Tensor) -> Tensor:
    """[vocab] d logits / d x along u, measured on the real modules where the linear part
    of the norm is all there is: x centred, orthogonal to u, with mean(x^2) = 1."""
    model = lm.model
    norm = model.get_submodule(FINAL_NORM[lm.layout.model_type])
    head = model.get_output_embeddings()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(D_MODEL, generator=gen, dtype=torch.float64)
    basis, _ = torch.linalg.qr(
        torch.stack([torch.ones(D_MODEL, dtype=torch.float64), u.double()], 1)
    )
    x = x - basis @ (basis.T @ x)  # mean 0 and orthogonal to u
    x = (x / x.pow(2).mean().sqrt()).float()
    _, tangent = torch.func.jvp(lambda h: head(norm(h)), (x,), (u.float(),))
    return tangent


def model_space_direction(sae: Sae, feature: int) -> Tensor:
    """What one unit of `feature` adds in the model's space, by the SAE's own decode, at a
    token of std 1 (the convention for per-token LayerNorm SAEs)."""
    x = torch.randn(1, sae.d_in, generator=torch.Generator().manual_seed(1))
    x = (x - x.mean()) / x.std()
    _, ctx = sae.normalize(x)
    one = torch.zeros(1, sae.d_sae)
    one[0, feature] = 1.0
    with torch.no_grad():
        return (sae.decode(one, ctx) - sae.decode(torch.zeros_like(one), ctx))[0]


def test_direction_map_is_the_norms_own_linear_part(lm: LoadedModel) -> None:
    w_u = lm.layout.unembed_weight(lm.model).detach()
    norm_map = lm.layout.final_norm_direction_map(lm.model)
    for seed in range(3):
        u = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed)) + 0.5 * seed
        want = norm_then_head_jvp(lm, u)
        got = unembed_directions(u[None], w_u, norm_map)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # the norm matters on every tiny model (its weights are randomised): a plain
        # W_U @ u, or a gain without centring, would fail the check above
        assert not torch.allclose(unembed_directions(u[None], w_u, None)[0], want, atol=1e-3)


@pytest.mark.parametrize("input_norm", list(InputNorm))
def test_logit_effects_of_sae_features(lm: LoadedModel, input_norm: InputNorm) -> None:
    sae = random_sae(D_MODEL, "resid_post.0", sae_id="s", input_norm=input_norm, seed=5)
    features = [0, 17, 63]
    got = logit_effects(lm, sae, N, features=features)
    for row, f in enumerate(features):
        effects = norm_then_head_jvp(lm, model_space_direction(sae, f)).numpy()
        order = np.argsort(-effects, kind="stable")
        assert got.promoted_ids[row].tolist() == order[:N].tolist()
        assert got.suppressed_ids[row].tolist() == order[::-1][:N].tolist()
        np.testing.assert_allclose(got.promoted[row], effects[order[:N]], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            got.suppressed[row], effects[order[::-1][:N]], rtol=1e-4, atol=1e-5
        )


def test_all_features_chunked_equal_one_by_one(
    lm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    sae = random_sae(D_MODEL, "resid_post.0", sae_id="s", input_norm=InputNorm.SCALE, seed=6)
    whole = logit_effects(lm, sae, N)
    monkeypatch.setattr(feature_math, "VOCAB_BLOCK", 96)  # W_U in several blocks too
    chunked = logit_effects(lm, sae, N, chunk=7)
    assert whole.promoted_ids.shape == (sae.d_sae, N)
    np.testing.assert_array_equal(chunked.promoted_ids, whole.promoted_ids)
    np.testing.assert_array_equal(chunked.suppressed_ids, whole.suppressed_ids)
    np.testing.assert_allclose(chunked.promoted, whole.promoted, rtol=1e-5, atol=1e-6)
    one = logit_effects(lm, sae, N, features=[40])
    np.testing.assert_array_equal(one.promoted_ids[0], whole.promoted_ids[40])
    np.testing.assert_allclose(one.suppressed[0], whole.suppressed[40], rtol=1e-5, atol=1e-6)


def test_feature_token_effects_decode_each_token(lm: LoadedModel) -> None:
    sae = random_sae(D_MODEL, "resid_post.0", sae_id="s", seed=8)
    promoted, suppressed = feature_token_effects(lm, sae, 3, N)
    want = logit_effects(lm, sae, N, features=[3])
    assert [t.token_id for t in promoted] == want.promoted_ids[0].tolist()
    assert [t.token_id for t in suppressed] == want.suppressed_ids[0].tolist()
    assert [t.token for t in promoted] == [lm.tokenizer.decode([t.token_id]) for t in promoted]
    assert [t.effect for t in suppressed] == pytest.approx(want.suppressed[0].tolist())


def test_plain_lens_and_other_widths() -> None:
    """By hand, without a model: W_U @ u, the LayerNorm map, and no path for other widths."""
    w_u = torch.tensor([[1.0, 1.0], [2.0, -1.0], [0.0, 1.0]])  # [vocab 3, d 2]
    u = torch.tensor([[1.0, 0.0], [1.0, 3.0]])
    assert unembed_directions(u, w_u, None).tolist() == [[1.0, 2.0, 0.0], [4.0, -1.0, 3.0]]
    gain = NormDirectionMap(gain=torch.tensor([2.0, 1.0]), centres=False)
    assert unembed_directions(u, w_u, gain).tolist() == [[2.0, 4.0, 0.0], [5.0, 1.0, 3.0]]
    # centring: [1, 3] -> [-1, 1] -> gain [-2, 1]
    layer_norm = NormDirectionMap(gain=torch.tensor([2.0, 1.0]), centres=True)
    assert unembed_directions(u[1:], w_u, layer_norm).tolist() == [[-1.0, -5.0, 1.0]]


def test_an_sae_of_another_width_has_no_logit_effects(lm: LoadedModel) -> None:
    sae = random_sae(D_MODEL * 2, "mlp_out.0", sae_id="wide", seed=9)
    got = logit_effects(lm, sae, N, features=[1, 2])
    assert got.promoted_ids.shape == got.suppressed.shape == (2, 0)
    assert feature_token_effects(lm, sae, 1, N) == ([], [])
