"""Decomposition against a manual forward and numpy SAE formulas; batch invariance; errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saeserve.engine.decompose import decompose, decompose_many
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest, DecomposeResult
from saeserve.errors import InvalidArgument, NotFound
from tests.engine import reference
from tests.engine.conftest import random_sae

TEXTS = [
    "The cat sat on the mat.",
    "Hi",
    "A much longer sentence, with commas, about the river and the sea.",
]


def _check_against_reference(
    served: ServedModel, res: DecomposeResult, top_k: int, features: list[int]
) -> None:
    """Every text's SAE outputs equal the numpy formulas on a manual forward's activations."""
    assert res.n_tokens == sum(len(t.tokenization.token_ids) for t in res.texts)
    for text in res.texts:
        acts = reference.capture(
            served.lm.model, served.lm.layout.family, text.tokenization.token_ids
        )
        for out in text.saes:
            hooked = served.saes[out.sae_id]
            x = acts[hooked.hook_point.name]
            a, recon = reference.encode(hooked.sae, x)
            assert out.top_ids.shape == out.top_values.shape == (len(x), top_k)
            want_vals = -np.sort(-a, axis=-1)[:, :top_k]
            np.testing.assert_allclose(out.top_values, want_vals, rtol=1e-4, atol=1e-4)
            rows = np.arange(len(a))[:, None]
            active = out.top_ids >= 0
            np.testing.assert_allclose(
                a[rows, np.where(active, out.top_ids, 0)][active],
                out.top_values[active],
                rtol=1e-4,
                atol=1e-4,
            )
            assert (out.top_values[~active] == 0).all()
            np.testing.assert_allclose(out.dense_values, a[:, features], rtol=1e-4, atol=1e-4)
            sq = ((x - recon) ** 2).sum(-1)
            dist = ((x - x.mean(0)) ** 2).sum(-1)
            assert out.token_mse is not None and out.explained_variance is not None
            if len(x) > 1:
                np.testing.assert_allclose(out.token_mse, sq / dist.mean(), rtol=1e-3)
                assert out.explained_variance == pytest.approx(
                    1 - sq.sum() / dist.sum(), rel=1e-3, abs=1e-4
                )


def test_matches_manual_forward_and_numpy_sae(served: ServedModel) -> None:
    # top_k 6 is below post0's k=8 and above mid1's k=4
    features = [0, 5, 63]
    res = decompose(served, DecomposeRequest(texts=TEXTS, top_k=6, feature_ids=features))
    _check_against_reference(served, res, 6, features)


@pytest.fixture(scope="module")
def wide(gpt2_path: Path) -> ServedModel:
    """A TopK SAE wider than the test model (1024 latents, k=16), on many tokens."""
    served = ServedModel.load(gpt2_path)
    d = served.lm.layout.d_model
    served.add_sae(random_sae(d, "resid_post.1", sae_id="wide", k=16, d_sae=1024, seed=5))
    return served


@pytest.mark.parametrize("top_k", [5, 16, 40])  # below, at and above the SAE's k
def test_wide_topk_sae_matches_numpy_for_any_top_k(wide: ServedModel, top_k: int) -> None:
    texts = [" ".join(TEXTS * 4), *TEXTS]
    features = [0, 17, 511, 1023]
    res = decompose(wide, DecomposeRequest(texts=texts, top_k=top_k, feature_ids=features))
    assert res.n_tokens >= 64
    _check_against_reference(wide, res, top_k, features)


def test_padding_never_changes_a_result(served: ServedModel) -> None:
    req = dict(top_k=5, feature_ids=[1, 2, 3])
    batch = decompose(served, DecomposeRequest(texts=TEXTS, **req)).texts
    for text, together in zip(TEXTS, batch, strict=True):
        alone = decompose(served, DecomposeRequest(texts=[text], **req)).texts[0]
        assert alone.tokenization == together.tokenization
        for a, b in zip(alone.saes, together.saes, strict=True):
            np.testing.assert_allclose(a.top_values, b.top_values, atol=1e-5)
            np.testing.assert_allclose(a.dense_values, b.dense_values, atol=1e-5)
            np.testing.assert_allclose(a.token_mse, b.token_mse, rtol=1e-4, atol=1e-6)


def test_selected_saes_and_no_reconstruction(served: ServedModel) -> None:
    res = decompose(
        served, DecomposeRequest(texts=["hello"], sae_ids=["jump1"], include_reconstruction=False)
    )
    (only,) = res.texts[0].saes
    assert only.sae_id == "jump1" and only.hook_point == "resid_post.1"
    assert only.token_mse is None and only.explained_variance is None


def test_byte_offsets_slice_the_utf8_text(served: ServedModel) -> None:
    text = "naïve café"
    tok = decompose(served, DecomposeRequest(texts=[text], top_k=1)).texts[0].tokenization
    raw = text.encode()
    assert all(0 <= s <= e <= len(raw) for s, e in tok.offsets)
    starts = [s for s, e in tok.offsets if e > s]
    assert starts == sorted(starts) and starts[0] == 0
    assert tok.offsets[-1][1] == len(raw)  # bytes, not the 10 characters
    assert tok.offsets[-1][1] == len(raw)


def test_token_strings_are_each_token_decoded_alone(served: ServedModel) -> None:
    text = "naïve café, the cat and the cat"
    for _ in range(2):  # the second time from the remembered strings
        tok = decompose(served, DecomposeRequest(texts=[text], top_k=1)).texts[0].tokenization
        assert tok.tokens == [served.lm.tokenizer.decode([i]) for i in tok.token_ids]


@pytest.mark.parametrize(
    ("req", "error", "message"),
    [
        (DecomposeRequest(texts=[]), InvalidArgument, "texts"),
        (DecomposeRequest(texts=["ok", ""]), InvalidArgument, "texts[1]: must not be empty"),
        (DecomposeRequest(texts=["x " * 5000]), InvalidArgument, "exceeds the limit"),
        (DecomposeRequest(texts=["ok"], sae_ids=["nope"]), NotFound, "unknown SAE 'nope'"),
        (DecomposeRequest(texts=["ok"], top_k=0), InvalidArgument, "top_k"),
        (DecomposeRequest(texts=["ok"], top_k=65), InvalidArgument, "top_k: 65 must be in [1, 64]"),
        (DecomposeRequest(texts=["ok"], feature_ids=[64]), InvalidArgument, "feature_ids[0]: 64"),
        (DecomposeRequest(texts=["ok"], sae_ids=["post0", "post0"]), InvalidArgument, "unique"),
    ],
)
def test_bad_arguments_raise_typed_errors(served: ServedModel, req, error, message: str) -> None:
    with pytest.raises(error, match=None) as info:
        decompose(served, req)
    assert message in str(info.value)


def test_requests_batched_together_each_get_their_own_answer(served: ServedModel) -> None:
    reqs = [
        DecomposeRequest(texts=TEXTS[:2], sae_ids=["post0"], top_k=3, feature_ids=[7]),
        DecomposeRequest(
            texts=TEXTS[2:], top_k=9, feature_ids=[1, 7, 2], include_reconstruction=False
        ),
    ]
    together = decompose_many(served, reqs)
    for req, got in zip(reqs, together, strict=True):
        want = decompose(served, req)
        assert got.n_tokens == want.n_tokens
        for g, w in zip(got.texts, want.texts, strict=True):
            assert [s.sae_id for s in g.saes] == [s.sae_id for s in w.saes]
            for gs, ws in zip(g.saes, w.saes, strict=True):
                assert gs.top_ids.shape == ws.top_ids.shape
                np.testing.assert_allclose(gs.top_values, ws.top_values, atol=1e-5)
                np.testing.assert_allclose(gs.dense_values, ws.dense_values, atol=1e-5)
                assert (gs.token_mse is None) == (ws.token_mse is None)


def test_topk_latents_in_blocks_of_rows_equal_one_block(
    wide: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saeserve.sae import base

    texts = [" ".join(TEXTS * 4), *TEXTS]
    req = DecomposeRequest(texts=texts, top_k=16, feature_ids=[3, 700])
    whole = decompose(wide, req)
    # 64-row blocks of pre-activations and a shorter last block
    monkeypatch.setattr(base, "ENCODE_BLOCK_BYTES", 64 * 1024 * 4)
    blocks = decompose(wide, req)
    assert blocks.n_tokens % 64 != 0 and blocks.n_tokens > 128
    _check_against_reference(wide, blocks, 16, [3, 700])
    for a, b in zip(whole.texts, blocks.texts, strict=True):
        (sa,), (sb,) = a.saes, b.saes
        # the same values up to the matmul's rounding, which depends on the block's shape
        np.testing.assert_allclose(sa.top_values, sb.top_values, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(sa.token_mse, sb.token_mse, rtol=1e-5, atol=1e-7)
