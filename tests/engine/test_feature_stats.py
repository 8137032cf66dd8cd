"""Aggregated inspection and contrast against numpy brute force over Decompose's dense
output (every feature of a 64-latent SAE asked by ``feature_ids``), for TopK, JumpReLU and
ReLU SAEs; AUROC by counting pairs, not by ranks; ties by integer-valued samples.
Run: ``pytest tests/engine/test_feature_stats.py -q``.
"""

from __future__ import annotations

import numpy as np
import pytest

from saeserve.engine import active_features
from saeserve.engine.active_features import ActiveFeatures, forward_groups
from saeserve.engine.decompose import decompose
from saeserve.engine.feature_stats import (
    ActivityOrder,
    ContrastOrder,
    ContrastRequest,
    ContrastUnit,
    InspectRequest,
    contrast,
    contrast_features,
    inspect_features,
)
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest
from saeserve.errors import InvalidArgument, NotFound
from tests.engine.conftest import D_SAE

TEXT = "The cat sat on the mat, and the dog sat on the log by the river."
SET_A = ["The cat sat on the mat.", "A cat and a kitten purr.", "Cats chase mice all day long."]
SET_B = ["Stock prices fell sharply today.", "The market rallied on earnings.", "Bonds rose."]


def dense(served: ServedModel, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """Per text, per SAE: every feature's activation at every token, [T, d_sae]."""
    res = decompose(
        served,
        DecomposeRequest(
            texts=texts, top_k=1, feature_ids=list(range(D_SAE)), include_reconstruction=False
        ),
    )
    return [{s.sae_id: s.dense_values.astype(np.float64) for s in t.saes} for t in res.texts]


def ids_of(served: ServedModel, texts: list[str]) -> list[list[int]]:
    return [list(served.lm.tokenizer(t)["input_ids"]) for t in texts]


@pytest.mark.parametrize("order", list(ActivityOrder))
def test_inspect_equals_aggregation_by_hand(served: ServedModel, order: ActivityOrder) -> None:
    [acts] = dense(served, [TEXT])
    [ids] = ids_of(served, [TEXT])
    got = inspect_features(
        served, ids, InspectRequest(order_by=order, top_n=D_SAE, max_positions=3)
    )
    assert [s.sae_id for s in got] == list(served.saes)
    for s in got:
        a = acts[s.sae_id]  # [T, d_sae]
        active = a > 0
        count, total = active.sum(0), a.sum(0)
        key = {
            ActivityOrder.COUNT: count.astype(float),
            ActivityOrder.MAX: a.max(0),
            ActivityOrder.SUM: total,
            ActivityOrder.MEAN_ACTIVE: np.where(count > 0, total / np.maximum(count, 1), 0),
        }[order]
        fired = [f for f in range(D_SAE) if count[f] > 0]
        assert s.n_tokens == len(a) and s.active_features == len(fired)
        rank = sorted(fired, key=lambda f: (-key[f], f))
        if order is ActivityOrder.COUNT:  # integer keys: the order is exact
            assert [r.feature for r in s.features] == rank
        else:
            assert sorted(r.feature for r in s.features) == sorted(fired)
            np.testing.assert_allclose([key[r.feature] for r in s.features], key[rank], rtol=1e-6)
        for r in s.features:
            f = r.feature
            assert r.count == count[f]
            assert r.max_activation == pytest.approx(a[:, f].max(), rel=1e-5)
            assert r.max_position == int(np.argmax(a[:, f]))
            assert r.sum_activation == pytest.approx(total[f], rel=1e-5)
            assert r.mean_over_tokens == pytest.approx(total[f] / len(a), rel=1e-5)
            assert r.mean_over_active == pytest.approx(total[f] / count[f], rel=1e-5)
            where = np.flatnonzero(active[:, f])
            assert r.positions == where[:3].tolist()
            np.testing.assert_allclose(r.values, a[where[:3], f], rtol=1e-5)


def test_inspect_top_n_cuts_the_ranking(served: ServedModel) -> None:
    [ids] = ids_of(served, [TEXT])
    full = inspect_features(served, ids, InspectRequest(sae_ids=["post0"], top_n=D_SAE))
    cut = inspect_features(served, ids, InspectRequest(sae_ids=["post0"], top_n=5))
    assert cut[0].features == full[0].features[:5]
    assert cut[0].active_features == full[0].active_features


def brute_force(xa: np.ndarray, xb: np.ndarray) -> dict[str, np.ndarray]:
    """Per feature of samples xa [n_a, F] and xb [n_b, F]: means, AUROC by counting all
    pairs, Cohen's d with the pooled ddof-1 standard deviation."""
    n_a, n_b = len(xa), len(xb)
    # pair counts (exact integers), divided once: equal AUROCs stay equal floats
    gt = (xa[:, None, :] > xb[None, :, :]).sum((0, 1))
    eq = (xa[:, None, :] == xb[None, :, :]).sum((0, 1))
    pooled = np.sqrt(
        ((n_a - 1) * xa.var(0, ddof=1) + (n_b - 1) * xb.var(0, ddof=1)) / (n_a + n_b - 2)
    )
    diff = xa.mean(0) - xb.mean(0)
    return {
        "mean_a": xa.mean(0),
        "mean_b": xb.mean(0),
        "diff": diff,
        "auroc": (gt + eq / 2) / (n_a * n_b),
        "d": np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1), np.nan),
        "frac_a": (xa > 0).mean(0),
        "frac_b": (xb > 0).mean(0),
    }


def check_contrast(got, want: dict[str, np.ndarray], order: ContrastOrder, top_n: int) -> None:
    key = want["diff"] if order is ContrastOrder.MEAN_DIFF else want["auroc"] - 0.5
    other = want["auroc"] - 0.5 if order is ContrastOrder.MEAN_DIFF else want["diff"]
    tol = 1e-9
    up = sorted(np.flatnonzero(key > tol), key=lambda f: (-key[f], -other[f], f))
    down = sorted(np.flatnonzero(key < -tol), key=lambda f: (key[f], other[f], f))
    assert [r.feature for r in got.more_in_a] == [int(f) for f in up[:top_n]]
    assert [r.feature for r in got.more_in_b] == [int(f) for f in down[:top_n]]
    for r in [*got.more_in_a, *got.more_in_b]:
        f = r.feature
        assert r.mean_a == pytest.approx(want["mean_a"][f], rel=1e-6, abs=1e-9)
        assert r.mean_b == pytest.approx(want["mean_b"][f], rel=1e-6, abs=1e-9)
        assert r.mean_diff == pytest.approx(want["diff"][f], rel=1e-6, abs=1e-9)
        assert r.auroc == pytest.approx(want["auroc"][f], abs=1e-12)
        assert r.active_fraction_a == pytest.approx(want["frac_a"][f])
        assert r.active_fraction_b == pytest.approx(want["frac_b"][f])
        if np.isnan(want["d"][f]):
            assert r.cohens_d is None
        else:
            assert r.cohens_d == pytest.approx(want["d"][f], rel=1e-6)


@pytest.mark.parametrize("unit", list(ContrastUnit))
@pytest.mark.parametrize("order", list(ContrastOrder))
def test_contrast_equals_numpy_over_decompose(
    served: ServedModel, unit: ContrastUnit, order: ContrastOrder
) -> None:
    # one Decompose of both sets: the same padded forward as the contrast's
    per_text = dense(served, SET_A + SET_B)
    got = contrast_features(
        served,
        ids_of(served, SET_A),
        ids_of(served, SET_B),
        ContrastRequest(unit=unit, order_by=order, top_n=D_SAE),
    )
    assert [s.sae_id for s in got] == list(served.saes)
    for s in got:

        def samples(texts: list[dict[str, np.ndarray]], sae: str = s.sae_id) -> np.ndarray:
            if unit is ContrastUnit.TOKEN:
                return np.concatenate([t[sae] for t in texts])
            return np.stack([t[sae].max(0) for t in texts])

        xa, xb = samples(per_text[: len(SET_A)]), samples(per_text[len(SET_A) :])
        assert (s.samples_a, s.samples_b) == (len(xa), len(xb))
        assert s.active_features == int(((xa > 0).any(0) | (xb > 0).any(0)).sum())
        check_contrast(s, brute_force(xa, xb), order, D_SAE)


def sparse_sets(
    xa: np.ndarray, xb: np.ndarray, lengths_a: list[int], lengths_b: list[int]
) -> tuple[ActiveFeatures, ActiveFeatures]:
    def coo(x: np.ndarray, lengths: list[int]) -> ActiveFeatures:
        tok, feat = np.nonzero(x)
        return ActiveFeatures("s", "p", np.array(lengths), tok, feat, x[tok, feat])

    return coo(xa, lengths_a), coo(xb, lengths_b)


@pytest.mark.parametrize("order", list(ContrastOrder))
def test_contrast_mid_ranks_with_many_ties(order: ContrastOrder) -> None:
    rng = np.random.default_rng(0)
    # small integers, mostly zero: ties among zeros and among non-zero values
    xa = rng.integers(0, 4, (40, 30)) * (rng.random((40, 30)) < 0.4).astype(np.float64)
    xb = rng.integers(0, 3, (25, 30)) * (rng.random((25, 30)) < 0.3).astype(np.float64)
    xa[:, 7] = 2.0  # constant in A, and in B: pooled sd 0 -> no Cohen's d
    xb[:, 7] = 2.0
    xb[:, 8] = 0.0  # never active in B
    a, b = sparse_sets(xa, xb, [10, 30], [5, 5, 15])
    got = contrast(a, b, ContrastUnit.TOKEN, order, 5)
    check_contrast(got, brute_force(xa, xb), order, 5)
    # per-text max by hand
    ta = np.stack([xa[:10].max(0), xa[10:].max(0)])
    tb = np.stack([xb[:5].max(0), xb[5:10].max(0), xb[10:].max(0)])
    got = contrast(a, b, ContrastUnit.TEXT_MAX, order, 30)
    check_contrast(got, brute_force(ta, tb), order, 30)


def test_forward_groups_fit_the_budget() -> None:
    assert forward_groups([3, 3, 3], budget=6) == [range(0, 2), range(2, 3)]
    assert forward_groups([10, 1], budget=6) == [range(0, 1), range(1, 2)]
    assert forward_groups([2, 5], budget=10) == [range(0, 2)]
    assert forward_groups([2, 6], budget=10) == [range(0, 1), range(1, 2)]


def test_many_forwards_equal_one(served: ServedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    req = ContrastRequest(sae_ids=["post0", "jump1"], top_n=D_SAE)
    ids_a, ids_b = ids_of(served, SET_A), ids_of(served, SET_B)
    whole = contrast_features(served, ids_a, ids_b, req)
    monkeypatch.setattr(active_features, "FORWARD_TOKENS", 1)
    one_by_one = contrast_features(served, ids_a, ids_b, req)
    for w, o in zip(whole, one_by_one, strict=True):
        assert [r.feature for r in w.more_in_a] == [r.feature for r in o.more_in_a]
        for x, y in zip(w.more_in_a, o.more_in_a, strict=True):
            assert x.mean_diff == pytest.approx(y.mean_diff, rel=1e-4, abs=1e-6)


def test_errors_name_the_field(served: ServedModel) -> None:
    with pytest.raises(InvalidArgument, match="texts_b"):
        contrast_features(served, [[1, 2]], [], ContrastRequest())
    with pytest.raises(NotFound, match=r"saes\[0\]: unknown SAE 'nope'"):
        contrast_features(served, [[1]], [[2]], ContrastRequest(sae_ids=["nope"]))
    with pytest.raises(NotFound, match=r"saes\[1\]"):
        inspect_features(served, [1, 2], InspectRequest(sae_ids=["post0", "nope"]))


def test_the_lock_is_held_around_each_forward(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Lock:
        held, entered = False, 0

        def __enter__(self) -> None:
            self.held, self.entered = True, self.entered + 1

        def __exit__(self, *exc: object) -> None:
            self.held = False

    lock = Lock()
    forward = active_features.forward_saes

    def checked(*args: object, **kwargs: object) -> None:
        assert lock.held
        forward(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(active_features, "forward_saes", checked)
    monkeypatch.setattr(active_features, "FORWARD_TOKENS", 1)  # one text per forward
    contrast_features(served, ids_of(served, SET_A), ids_of(served, SET_B), ContrastRequest(), lock=lock)  # fmt: skip
    assert lock.entered == len(SET_A) + len(SET_B) and not lock.held
    inspect_features(served, ids_of(served, [TEXT])[0], InspectRequest(), lock=lock)
    assert lock.entered == len(SET_A) + len(SET_B) + 1
