"""Each intervention mode moves the hooked activation exactly as DESIGN.md's formula says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saeserve.engine.interventions import SteeringPlan, resolve_interventions
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import EngineLimits, Intervention, InterventionMode, PositionKind
from saeserve.errors import InvalidArgument, NotFound
from tests.engine import reference

M = InterventionMode
S = 5  # tokens per row
PROMPT_LEN = 3


def _apply(
    served: ServedModel, rows: list[list[Intervention]], h: torch.Tensor, point_name: str
) -> torch.Tensor:
    resolved = [resolve_interventions(served, ivs, PROMPT_LEN) for ivs in rows]
    plan = SteeringPlan(resolved)
    token_pos = torch.arange(S).expand(len(rows), S)
    fns = plan.hook_fns(token_pos, torch.full((len(rows),), PROMPT_LEN))
    point = served.hook_point(point_name)
    out = fns[point](h.clone())
    assert out is not None
    return out


def _expected(served: ServedModel, iv: Intervention, h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sae = served.saes[iv.sae_id].sae
    a, _ = reference.encode(sae, h)
    a_f = a[:, iv.feature]
    d_f = sae.W_dec[iv.feature].detach().double().numpy()
    if iv.normalize:
        d_f = d_f / np.linalg.norm(d_f)
    coeff = {
        M.ADD: np.full_like(a_f, iv.value),
        M.CLAMP: iv.value - a_f,
        M.SCALE: (iv.value - 1) * a_f,
        M.ABLATE: -a_f,
    }[iv.mode]
    return h + (coeff * mask)[:, None] * d_f[None, :] * reference.norm_scale(sae, h)


@pytest.mark.parametrize("sae_id", ["post0", "mid1", "jump1", "relu0"])
@pytest.mark.parametrize("mode", [M.ADD, M.CLAMP, M.SCALE, M.ABLATE])
def test_each_mode_matches_its_formula(
    served: ServedModel, sae_id: str, mode: InterventionMode
) -> None:
    hooked = served.saes[sae_id]
    d = served.lm.layout.d_model
    h = torch.randn(2, S, d, generator=torch.Generator().manual_seed(7)) * 3
    # steer the feature that is most active on row 0, so CLAMP/SCALE/ABLATE have something to act on
    a, _ = reference.encode(hooked.sae, h[0].double().numpy())
    feature = int(a.sum(0).argmax())
    iv = Intervention(mode=mode, value=2.5, sae_id=sae_id, feature=feature)
    other = Intervention(
        mode=M.ADD, value=-1.0, sae_id=sae_id, feature=(feature + 1) % 64, normalize=True
    )
    out = _apply(served, [[iv], [other]], h, hooked.hook_point.name).double().numpy()
    ones = np.ones(S)
    np.testing.assert_allclose(
        out[0], _expected(served, iv, h[0].double().numpy(), ones), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        out[1], _expected(served, other, h[1].double().numpy(), ones), rtol=1e-4, atol=1e-4
    )


def test_several_interventions_on_one_sae_read_the_unsteered_activations(
    served: ServedModel,
) -> None:
    d = served.lm.layout.d_model
    h = torch.randn(1, S, d, generator=torch.Generator().manual_seed(3)) * 3
    ivs = [
        Intervention(mode=M.CLAMP, value=1.0, sae_id="post0", feature=4),
        Intervention(mode=M.SCALE, value=3.0, sae_id="post0", feature=9),
    ]
    out = _apply(served, [ivs], h, "resid_post.0").double().numpy()[0]
    x = h[0].double().numpy()
    want = x + sum(_expected(served, iv, x, np.ones(S)) - x for iv in ivs)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_clamp_to_current_value_and_scale_by_one_are_no_ops(served: ServedModel) -> None:
    d = served.lm.layout.d_model
    for sae_id in ["post0", "mid1", "jump1", "relu0"]:
        hooked = served.saes[sae_id]
        h = torch.randn(1, 1, d, generator=torch.Generator().manual_seed(11)) * 3
        a, _ = reference.encode(hooked.sae, h[0].double().numpy())
        f = int(a[0].argmax())
        clamp = Intervention(mode=M.CLAMP, value=float(a[0, f]), sae_id=sae_id, feature=f)
        scale = Intervention(mode=M.SCALE, value=1.0, sae_id=sae_id, feature=f)
        resolved = [resolve_interventions(served, [clamp, scale], 1)]
        fns = SteeringPlan(resolved).hook_fns(
            torch.zeros(1, 1, dtype=torch.long), torch.ones(1, dtype=torch.long)
        )
        out = fns[hooked.hook_point](h.clone())
        torch.testing.assert_close(out, h, rtol=1e-5, atol=1e-5)


def test_vector_and_positions(served: ServedModel) -> None:
    d = served.lm.layout.d_model
    h = torch.randn(4, S, d, generator=torch.Generator().manual_seed(5))
    v = [float(i % 3) for i in range(d)]
    rows = [
        [Intervention(mode=M.VECTOR, value=2.0, hook_point="resid_post.0", vector=v)],
        [Intervention(mode=M.VECTOR, value=2.0, hook_point="blocks.0.hook_resid_post", vector=v, normalize=True, positions=PositionKind.PROMPT)],
        [Intervention(mode=M.VECTOR, value=2.0, hook_point="resid_post.0", vector=v, positions=PositionKind.GENERATED)],
        [Intervention(mode=M.VECTOR, value=2.0, hook_point="resid_post.0", vector=v, positions=PositionKind.INDICES, indices=[0, 2])],
    ]  # fmt: skip
    out = _apply(served, rows, h, "resid_post.0").double().numpy()
    vec = np.array(v)
    masks = [
        np.ones(S),
        (np.arange(S) < PROMPT_LEN),
        (np.arange(S) >= PROMPT_LEN),
        np.isin(np.arange(S), [0, 2]),
    ]
    dirs = [vec, vec / np.linalg.norm(vec), vec, vec]
    for r in range(4):
        want = h[r].double().numpy() + 2.0 * masks[r][:, None] * dirs[r][None, :]
        np.testing.assert_allclose(out[r], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("iv", "error", "message"),
    [
        (Intervention(mode=M.ADD, value=1, sae_id="post0", feature=64), InvalidArgument, "feature: 64 must be in [0, 64)"),
        (Intervention(mode=M.ADD, value=1, sae_id="post0", feature=-1), InvalidArgument, "feature"),
        (Intervention(mode=M.ADD, value=math.nan, sae_id="post0", feature=1), InvalidArgument, "value: must be finite"),
        (Intervention(mode=M.ADD, value=math.inf, sae_id="post0", feature=1), InvalidArgument, "finite"),
        (Intervention(mode=M.ADD, value=1e9, sae_id="post0", feature=1), InvalidArgument, "value (absolute): 1000000000.0 > limit 1000"),
        (Intervention(mode=M.ADD, value=1, sae_id="nope", feature=1), NotFound, "unknown SAE 'nope'"),
        (Intervention(mode=M.ADD, value=1, feature=1), InvalidArgument, "needs an SAE id"),
        (Intervention(mode=M.VECTOR, value=1, hook_point="resid_post.0", vector=[1.0]), InvalidArgument, "vector: needs exactly d_model"),
        (Intervention(mode=M.VECTOR, value=1, hook_point="resid_post.99", vector=[1.0]), InvalidArgument, "hook_point"),
        (Intervention(mode=M.VECTOR, value=1, vector=[1.0]), InvalidArgument, "VECTOR needs a hook point"),
        (Intervention(mode=M.ADD, value=1, sae_id="post0", feature=1, positions=PositionKind.INDICES, indices=[3]), InvalidArgument, "indices[0]: 3 must be in [0, 3)"),
        (Intervention(mode=M.ADD, value=1, sae_id="post0", feature=1, positions=PositionKind.INDICES), InvalidArgument, "at least one index"),
        (Intervention(mode=M.CLAMP, value=1, sae_id="post0", feature=1, normalize=True), InvalidArgument, "normalize"),
    ],
)  # fmt: skip
def test_bad_interventions(
    served: ServedModel, iv: Intervention, error: type, message: str
) -> None:
    with pytest.raises(error) as info:  # the model-free checks, then the model's
        iv.validate(EngineLimits(max_abs_intervention_value=1000), "interventions[0]")
        resolve_interventions(served, [iv], PROMPT_LEN)
    assert message in str(info.value)
    assert "interventions[0]" in str(info.value)


def _rows_mixed(served: ServedModel, d: int) -> list[list[Intervention]]:
    """Rows of every kind: all-ADD, CLAMP beside ADD on one SAE, LayerNorm ADD (needs the
    token's std), VECTOR, prompt-only and generated-only, and a row with nothing."""
    v = [float(i % 5) - 2 for i in range(d)]
    return [
        [Intervention(mode=M.ADD, value=3.0, sae_id="post0", feature=2),
         Intervention(mode=M.VECTOR, value=0.5, hook_point="resid_post.0", vector=v)],
        [Intervention(mode=M.CLAMP, value=2.0, sae_id="post0", feature=5),
         Intervention(mode=M.ADD, value=-1.0, sae_id="post0", feature=2, normalize=True),
         Intervention(mode=M.CLAMP, value=4.0, sae_id="post0", feature=9, positions=PositionKind.PROMPT)],
        [],
        [Intervention(mode=M.ADD, value=2.0, sae_id="relu0", feature=1),
         Intervention(mode=M.ADD, value=5.0, sae_id="relu0", feature=8, positions=PositionKind.PROMPT),
         Intervention(mode=M.ABLATE, value=0.0, sae_id="post0", feature=7, positions=PositionKind.GENERATED)],
        [Intervention(mode=M.ADD, value=1.5, sae_id="mid1", feature=3),
         Intervention(mode=M.CLAMP, value=0.0, sae_id="jump1", feature=4)],
    ]  # fmt: skip


def _run_point(
    served: ServedModel,
    rows: list[list[Intervention]],
    h: torch.Tensor,
    point_name: str,
    *,
    decode: bool,
) -> torch.Tensor:
    """The hook at one point on h [B, S, d]: decode hooks, or the general ones with every
    token at a generated position (>= PROMPT_LEN) when ``decode`` is False."""
    plan = SteeringPlan([resolve_interventions(served, ivs, PROMPT_LEN) for ivs in rows])
    if decode:
        fns = plan.decode_hook_fns()
    else:
        token_pos = PROMPT_LEN + torch.arange(h.shape[1]).expand(len(rows), h.shape[1])
        fns = plan.hook_fns(token_pos, torch.full((len(rows),), PROMPT_LEN))
    fn = fns.get(served.hook_point(point_name))  # none where no row steers this point
    out = None if fn is None else fn(h.clone())
    return h if out is None else out


@pytest.mark.parametrize("point_name", ["resid_post.0", "mlp_out.0", "resid_mid.1", "resid_post.1"])
def test_decode_hooks_equal_the_general_hooks_and_each_row_alone(
    served: ServedModel, point_name: str
) -> None:
    d = served.lm.layout.d_model
    rows = _rows_mixed(served, d)
    h = torch.randn(len(rows), 1, d, generator=torch.Generator().manual_seed(13)) * 3
    together = _run_point(served, rows, h, point_name, decode=True)
    general = _run_point(served, rows, h, point_name, decode=False)
    torch.testing.assert_close(together, general, rtol=1e-5, atol=1e-5)
    for r, ivs in enumerate(rows):
        for decode in (True, False):
            alone = _run_point(served, [ivs], h[r : r + 1], point_name, decode=decode)
            torch.testing.assert_close(together[r : r + 1], alone, rtol=1e-5, atol=1e-5)


def test_mixed_rows_at_generated_positions_match_the_formulas(served: ServedModel) -> None:
    d = served.lm.layout.d_model
    rows = _rows_mixed(served, d)
    h = torch.randn(len(rows), 1, d, generator=torch.Generator().manual_seed(17)) * 3
    for point_name in ["resid_post.0", "mlp_out.0", "resid_mid.1", "resid_post.1"]:
        out = _run_point(served, rows, h, point_name, decode=True).double().numpy()
        point = served.hook_point(point_name)
        for r, ivs in enumerate(rows):
            x = h[r].double().numpy()
            want = x.copy()
            for iv in ivs:
                if iv.positions is PositionKind.PROMPT:
                    continue  # a decode token is a generated one
                if iv.mode is M.VECTOR:
                    if served.hook_point(iv.hook_point) == point:
                        want += iv.value * np.array(iv.vector)[None, :]
                elif served.saes[iv.sae_id].hook_point == point:
                    want += _expected(served, iv, x, np.ones(1)) - x
            np.testing.assert_allclose(out[r], want, rtol=1e-4, atol=1e-4)


def test_all_add_plans_never_encode(served: ServedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from saeserve.sae.base import Sae

    def no_encoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("an ADD-only plan ran the SAE encoder")

    monkeypatch.setattr(Sae, "encode_sparse", no_encoder)
    d = served.lm.layout.d_model
    h = torch.randn(2, S, d, generator=torch.Generator().manual_seed(19)) * 3
    for sae_id in ["post0", "mid1", "jump1", "relu0"]:
        point = served.saes[sae_id].hook_point.name
        iv = Intervention(mode=M.ADD, value=2.0, sae_id=sae_id, feature=6)
        out = _apply(served, [[iv], []], h, point).double().numpy()
        x = h[0].double().numpy()
        np.testing.assert_allclose(
            out[0], _expected(served, iv, x, np.ones(S)), rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(out[1], h[1].double().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sae_id", ["post0", "mid1"])  # TopK SAEs
def test_inactive_features_match_the_formulas(served: ServedModel, sae_id: str) -> None:
    hooked = served.saes[sae_id]
    d = served.lm.layout.d_model
    h = torch.randn(1, 1, d, generator=torch.Generator().manual_seed(23)) * 3
    x = h[0].double().numpy()
    a, _ = reference.encode(hooked.sae, x)
    # the features with the lowest pre-activations: inactive
    p = {k: v.detach().double().numpy() for k, v in hooked.sae.state_dict().items()}
    x_n = x
    if sae_id == "mid1":  # LayerNorm input
        centered = x - x.mean(-1, keepdims=True)
        x_n = centered / (centered.std(-1, ddof=1, keepdims=True) + 1e-5)
    pre = (x_n - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    low = [int(f) for f in np.argsort(pre[0])[:3]]
    assert all(a[0, f] == 0 for f in low)
    ivs = [
        Intervention(mode=M.CLAMP, value=2.0, sae_id=sae_id, feature=low[0]),
        Intervention(mode=M.SCALE, value=3.0, sae_id=sae_id, feature=low[1]),
        Intervention(mode=M.ABLATE, value=0.0, sae_id=sae_id, feature=low[2]),
    ]
    plan = SteeringPlan([resolve_interventions(served, ivs, PROMPT_LEN)])
    fn = plan.decode_hook_fns()[hooked.hook_point]
    out = fn(h.clone())
    assert out is not None
    want = x + sum(_expected(served, iv, x, np.ones(1)) - x for iv in ivs)
    np.testing.assert_allclose(out[0].double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_rows_each_scaling_their_own_feature_match_the_formulas(served: ServedModel) -> None:
    """A decode batch where each row scales its own feature, active on its own row or only
    on another row: every row equals the formula (another row's activity does not count)."""
    sae_id = "post0"  # TopK, no input norm
    hooked = served.saes[sae_id]
    d = served.lm.layout.d_model
    h = torch.randn(4, 1, d, generator=torch.Generator().manual_seed(29)) * 3
    p = {k: v.detach().double().numpy() for k, v in hooked.sae.state_dict().items()}
    pre = (h[:, 0].double().numpy() - p["b_dec"]) @ p["W_enc"] + p["b_enc"]  # [4, d_sae]
    # rows 0 and 2 scale their strongest feature; rows 1 and 3 one that is negative on
    # their own row but positive on row 0
    strongest = [int(np.argmax(pre[r])) for r in range(4)]
    cross = [int(f) for f in np.flatnonzero((pre[1] < 0) & (pre[3] < 0) & (pre[0] > 0))[:2]]
    features = [strongest[0], cross[0], strongest[2], cross[1]]
    rows = [[Intervention(mode=M.SCALE, value=3.0, sae_id=sae_id, feature=f)] for f in features]
    out = _run_point(served, rows, h, hooked.hook_point.name, decode=True).double().numpy()
    for r, ivs in enumerate(rows):
        x = h[r].double().numpy()
        want = _expected(served, ivs[0], x, np.ones(1))
        np.testing.assert_allclose(out[r], want, rtol=1e-4, atol=1e-4)


def test_features_at_the_topk_boundary_match_the_formulas(served: ServedModel) -> None:
    """The k-th largest pre-activation is active and the (k+1)-th is not: scaling each
    moves h exactly as the formula says (a feature a rank too far either way would not)."""
    sae_id = "post0"  # TopK, no input norm
    hooked = served.saes[sae_id]
    k = hooked.sae.cfg.k
    assert k is not None
    d = served.lm.layout.d_model
    h = torch.randn(2, 1, d, generator=torch.Generator().manual_seed(31)) * 3
    p = {n: v.detach().double().numpy() for n, v in hooked.sae.state_dict().items()}
    rows = []
    for r in range(2):
        pre = (h[r, 0].double().numpy() - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        order = np.argsort(-pre)
        assert pre[order[k]] > 0  # the first inactive one is positive: only its rank hides it
        rows.append(
            [Intervention(mode=M.SCALE, value=3.0, sae_id=sae_id, feature=int(order[k - 1 + r]))]
        )
    out = _run_point(served, rows, h, hooked.hook_point.name, decode=True).double().numpy()
    for r, ivs in enumerate(rows):
        x = h[r].double().numpy()
        np.testing.assert_allclose(
            out[r], _expected(served, ivs[0], x, np.ones(1)), rtol=1e-4, atol=1e-4
        )
    assert not np.allclose(out[0], h[0].double().numpy())  # the k-th one was scaled
    np.testing.assert_allclose(out[1], h[1].double().numpy(), rtol=1e-6, atol=1e-6)


def test_an_integer_value_steers_as_its_float(served: ServedModel) -> None:
    """Python callers may pass ``value=16``: a decode step (no position mask to promote the
    coefficients) steers with the float tables all the same."""
    h = torch.randn(1, 1, served.lm.layout.d_model, generator=torch.Generator().manual_seed(3))
    point = served.hook_point("resid_post.0")
    out = []
    for value in (16, 16.0):
        iv = Intervention(M.ADD, value, "post0", 2)
        plan = SteeringPlan([resolve_interventions(served, [iv], PROMPT_LEN)])
        out.append(plan.decode_hook_fns()[point](h.clone()))
    torch.testing.assert_close(out[0], out[1])


@pytest.mark.parametrize("sae_id", ["post0", "mid1", "jump1"])
def test_clamp_threshold_matches_its_formula_from_the_features_column_alone(
    served: ServedModel, sae_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLAMP_THRESHOLD: h += (value - a'_f) d_f with a'_f = max(pre_f, 0) where pre_f >
    threshold, else 0 (numpy, from the formula's pre-activations), and no full encoder
    runs. On a TopK SAE a'_f differs from the exact a_f somewhere (not CLAMP in disguise)."""
    hooked = served.saes[sae_id]
    sae = hooked.sae
    d = served.lm.layout.d_model
    h = torch.randn(2, S, d, generator=torch.Generator().manual_seed(11)) * 3
    x = h[0].double().numpy()
    pre = reference.pre_activations(sae, x)
    a, _ = reference.encode(sae, x)
    threshold = 0.2
    # a feature above the threshold on some tokens and below on others
    above = (pre > threshold).sum(0)
    feature = int(np.argmin(np.abs(above - S / 2)))
    iv = Intervention(M.CLAMP_THRESHOLD, 2.5, sae_id=sae_id, feature=feature, threshold=threshold)

    def no_full_encoder(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("CLAMP_THRESHOLD ran the full encoder")

    monkeypatch.setattr(type(sae), "pre_activations", no_full_encoder)
    out = _apply(served, [[iv], []], h, hooked.hook_point.name).double().numpy()
    pre_f = pre[:, feature]
    a_approx = np.where(pre_f > threshold, np.maximum(pre_f, 0), 0.0)
    d_f = sae.W_dec[feature].detach().double().numpy()
    want = x + ((2.5 - a_approx)[:, None] * d_f[None, :]) * reference.norm_scale(sae, x)
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[1], h[1].double().numpy(), rtol=0, atol=0)  # row 1 untouched
    assert 0 < (pre_f > threshold).sum() < S
    if sae.is_topk:
        assert not np.allclose(a_approx, a[:, feature])


def test_a_threshold_belongs_to_clamp_threshold_only() -> None:
    limits = EngineLimits()
    Intervention(M.CLAMP_THRESHOLD, 1.0, sae_id="s", feature=0, threshold=-0.5).validate(
        limits, "iv"
    )
    with pytest.raises(InvalidArgument, match=r"iv\.threshold: only for CLAMP_THRESHOLD"):
        Intervention(M.CLAMP, 1.0, sae_id="s", feature=0, threshold=0.5).validate(limits, "iv")
    with pytest.raises(InvalidArgument, match=r"iv\.threshold: must be finite"):
        Intervention(M.CLAMP_THRESHOLD, 1.0, sae_id="s", feature=0, threshold=math.nan).validate(
            limits, "iv"
        )


def test_a_prefill_encodes_only_the_positions_its_entries_apply_to(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLAMP at INDICES [0, 2] on row 0 and at PROMPT positions on row 1: the TopK SAE's
    encoder sees those 2 + PROMPT_LEN tokens only (not 2 x S), and both rows still match
    the formula at every position."""
    hooked = served.saes["post0"]
    d = served.lm.layout.d_model
    h = torch.randn(2, S, d, generator=torch.Generator().manual_seed(13)) * 3
    rows = [
        [Intervention(M.CLAMP, 4.0, sae_id="post0", feature=5, positions=PositionKind.INDICES, indices=[0, 2])],
        [Intervention(M.CLAMP, 4.0, sae_id="post0", feature=9, positions=PositionKind.PROMPT)],
    ]  # fmt: skip
    seen: list[int] = []
    real = type(hooked.sae).encode_sparse

    def counting(self: object, x: torch.Tensor, **kw: object) -> object:
        seen.append(x.reshape(-1, d).shape[0])
        return real(self, x, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(type(hooked.sae), "encode_sparse", counting)
    out = _apply(served, rows, h, hooked.hook_point.name).double().numpy()
    assert sum(seen) == 2 + PROMPT_LEN
    masks = [np.isin(np.arange(S), [0, 2]), np.arange(S) < PROMPT_LEN]
    for r in range(2):
        want = _expected(served, rows[r][0], h[r].double().numpy(), masks[r].astype(float))
        np.testing.assert_allclose(out[r], want, rtol=1e-4, atol=1e-4)
