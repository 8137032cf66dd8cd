"""Attribution against by-hand references on tiny random GPT-2 and Llama models.

Direct effects: (activation x decoder row) through a LayerNorm / RMSNorm written out in
numpy and the unembedding. Total effects: torch.autograd on a manual forward (a raw torch
hook that splices the SAE's latents, written out here, into the block output with the
error held constant). Reverse: autograd of a by-hand pre-activation w.r.t. the input
embeddings. Nothing here goes through saeserve's hook points or SAE code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from saeserve.engine.attribution import (
    AttributionRequest,
    EffectTerms,
    FeatureInputRequest,
    SaeAttribution,
    attribute,
    attribute_feature,
)
from saeserve.engine.served_model import ServedModel
from saeserve.errors import InvalidArgument
from saeserve.sae.base import Activation, InputNorm, Sae
from tests.engine import reference
from tests.engine.conftest import random_sae, served_with_saes

PROMPT = [1, 5, 9, 12, 7, 3, 22]
N_LAYERS = 3
BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers"}
FINAL_NORM = {"gpt2": "transformer.ln_f", "llama": "model.norm"}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def case(request: pytest.FixtureRequest) -> tuple[str, ServedModel]:
    family = request.param
    served = served_with_saes(request.getfixturevalue(f"{family}_path"))
    d = served.lm.layout.d_model
    served.add_sae(random_sae(d, f"resid_post.{N_LAYERS - 1}", sae_id="last", k=6, seed=7))
    return family, served


def _all_effects(a: SaeAttribution) -> dict[int, tuple[float, float, float]]:
    """feature -> (activation, direct, total) over every listed feature."""
    lists = (a.direct_positive, a.direct_negative, a.total_positive, a.total_negative)
    return {e.feature: (e.activation, e.direct, e.total) for xs in lists for e in xs}


def _final_norm_input(served: ServedModel, family: str) -> np.ndarray:
    """[seq, d] the final norm's input, by a raw pre-hook."""
    seen: list[Tensor] = []
    norm = served.lm.model.get_submodule(FINAL_NORM[family])
    handle = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].detach()))
    try:
        with torch.no_grad():
            served.lm.model(torch.tensor([PROMPT]))
    finally:
        handle.remove()
    return seen[0].double().numpy()


def _hand_direct(served: ServedModel, family: str, target: int, contrast: int | None):
    """(map of direction [d] -> direct effect, final norm bias term) by hand in numpy."""
    norm = served.lm.model.get_submodule(FINAL_NORM[family])
    x = _final_norm_input(served, family)[-1]
    gain = norm.weight.detach().double().numpy()
    w_u = served.lm.model.get_output_embeddings().weight.detach().double().numpy()
    w = w_u[target] - (w_u[contrast] if contrast is not None else 0)
    if family == "gpt2":  # LayerNorm: centre, divide by sqrt(var + eps)
        sigma = np.sqrt(x.var() + norm.eps)
        bias = float(w @ norm.bias.detach().double().numpy())

        def lin(u: np.ndarray) -> float:
            return float(w @ (gain * (u - u.mean())) / sigma)
    else:  # RMSNorm: divide by sqrt(mean(x^2) + eps)
        sigma = np.sqrt((x**2).mean() + norm.variance_epsilon)
        bias = 0.0

        def lin(u: np.ndarray) -> float:
            return float(w @ (gain * u) / sigma)

    return lin, bias


@pytest.mark.parametrize("contrast", [None, 11])
@pytest.mark.parametrize("sae_id", ["last", "post0", "mid1", "relu0"])
def test_direct_effects_by_hand(case: tuple[str, ServedModel], sae_id: str, contrast) -> None:
    family, served = case
    req = AttributionRequest(PROMPT, [sae_id], target=40, contrast=contrast, top_n=64)
    a = attribute(served, req).saes[0]
    sae = served.sae(sae_id).sae
    point = served.sae(sae_id).hook_point.name
    acts = reference.capture(served.lm.model, family, PROMPT)
    h = _final_norm_input(served, family)[-1:] if sae_id == "last" else acts[point][-1:]
    latents, recon = reference.encode(sae, h)
    scale = reference.norm_scale(sae, h)[0, 0]
    lin, _ = _hand_direct(served, family, 40, contrast)
    w_dec = sae.W_dec.detach().double().numpy()
    active = np.flatnonzero(latents[0])
    assert a.active == len(active)
    effects = _all_effects(a)
    assert set(effects) <= set(active.tolist())
    for f, (value, direct, _) in effects.items():
        assert value == pytest.approx(latents[0, f], rel=1e-4, abs=1e-5)
        assert direct == pytest.approx(latents[0, f] * lin(w_dec[f] * scale), rel=1e-3, abs=1e-5)
    # every feature with a non-zero direct effect is listed (top_n covers d_sae)
    listed = {e.feature for e in a.direct_positive + a.direct_negative}
    hand = {f for f in active if abs(latents[0, f] * lin(w_dec[f] * scale)) > 1e-6}
    assert hand <= listed
    # the identity: features + error + bias = the direct path of h
    assert a.direct.error == pytest.approx(lin(h[0] - recon[0]), rel=1e-3, abs=1e-4)
    assert a.direct.whole == pytest.approx(lin(h[0]), rel=1e-4, abs=1e-4)
    assert a.direct.features + a.direct.error + a.direct.bias == pytest.approx(
        a.direct.whole, rel=1e-4, abs=1e-4
    )


@pytest.mark.parametrize("contrast", [None, 11])
def test_last_block_direct_path_is_the_logit(case: tuple[str, ServedModel], contrast) -> None:
    """At the last block's output, the direct path is the whole metric less the norm's bias."""
    family, served = case
    res = attribute(served, AttributionRequest(PROMPT, ["last"], target=40, contrast=contrast))
    with torch.no_grad():
        logits = served.lm.model(torch.tensor([PROMPT])).logits[0, -1].double()
    want = float(logits[40] - (logits[contrast] if contrast is not None else 0))
    _, norm_bias = _hand_direct(served, family, 40, contrast)
    assert res.metric == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert res.target.logit == pytest.approx(float(logits[40]), rel=1e-5, abs=1e-5)
    assert res.saes[0].direct.whole + norm_bias == pytest.approx(want, rel=1e-4, abs=1e-4)


def _manual_total(served: ServedModel, family: str, sae: Sae, layer: int, target: int, contrast):
    """(latents [d_sae], d metric / d latents [d_sae], d metric / d h [d]) by a manual
    forward: a raw hook on block ``layer`` replaces the last token's output with the SAE's
    decode of leaf latents plus the error held constant (TopK / JumpReLU, no input norm)."""
    assert sae.cfg.input_norm is InputNorm.NONE
    w_enc, b_enc, w_dec, b_dec = (t.detach() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    leaf: dict[str, Tensor] = {}

    def splice(_m, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        x = h[0, -1].detach()
        pre = (x - b_dec) @ w_enc + b_enc
        if sae.cfg.activation is Activation.TOPK:
            top = torch.topk(pre, sae.cfg.k or 0)
            a = torch.zeros_like(pre).scatter(0, top.indices, torch.relu(top.values))
        else:
            a = torch.relu(pre) * (pre > sae.threshold.detach())
        a = a.clone().requires_grad_(True)
        x_leaf = x.clone().requires_grad_(True)
        error = (x - (a @ w_dec + b_dec)).detach()
        leaf["a"], leaf["x"] = a, x_leaf
        new_last = a @ w_dec + b_dec + error + (x_leaf - x_leaf.detach())
        h = torch.cat([h[:, :-1], new_last[None, None]], dim=1)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    block = served.lm.model.get_submodule(BLOCKS[family])[layer]
    handle = block.register_forward_hook(splice)
    try:
        with torch.enable_grad():
            logits = served.lm.model(torch.tensor([PROMPT])).logits[0, -1]
            metric = logits[target] - (logits[contrast] if contrast is not None else 0)
            grad_a, grad_x = torch.autograd.grad(metric, [leaf["a"], leaf["x"]])
    finally:
        handle.remove()
    return leaf["a"].detach(), grad_a, grad_x, leaf["x"].detach()


@pytest.mark.parametrize("contrast", [None, 11])
@pytest.mark.parametrize(("sae_id", "layer"), [("post0", 0), ("jump1", 1), ("last", 2)])
def test_total_effects_equal_autograd_on_a_manual_forward(
    case: tuple[str, ServedModel], sae_id: str, layer: int, contrast
) -> None:
    family, served = case
    sae = served.sae(sae_id).sae
    a, grad_a, grad_x, x = _manual_total(served, family, sae, layer, 40, contrast)
    req = AttributionRequest(PROMPT, [sae_id], target=40, contrast=contrast, top_n=sae.d_sae)
    res = attribute(served, req).saes[0]
    want = a * grad_a
    listed = {e.feature: e for e in res.total_positive + res.total_negative}
    for f in torch.nonzero(want).squeeze(-1).tolist():
        assert listed[f].total == pytest.approx(float(want[f]), rel=1e-3, abs=1e-5)
        assert listed[f].activation == pytest.approx(float(a[f]), rel=1e-5)
    assert res.total.features == pytest.approx(float(want.sum()), rel=1e-3, abs=1e-4)
    # the identity: features + error + bias = gradient x input at the hook point
    assert res.total.whole == pytest.approx(float(grad_x @ x), rel=1e-3, abs=1e-4)
    assert res.total.features + res.total.error + res.total.bias == pytest.approx(
        res.total.whole, rel=1e-4, abs=1e-4
    )


def test_argmax_target_and_no_parameter_grads(case: tuple[str, ServedModel]) -> None:
    _, served = case
    res = attribute(served, AttributionRequest(PROMPT))
    with torch.no_grad():
        logits = served.lm.model(torch.tensor([PROMPT])).logits[0, -1]
    assert res.target.token_id == int(logits.argmax())
    assert res.target.probability == pytest.approx(float(torch.softmax(logits, -1).max()), rel=1e-4)
    assert [s.sae_id for s in res.saes] == list(served.saes)
    assert res.contrast is None and res.position == len(PROMPT) - 1
    params = [*served.lm.model.parameters(), *(h.sae.W_dec for h in served.saes.values())]
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize(("sae_id", "layer", "position"), [("post0", 0, None), ("jump1", 1, 3)])
def test_feature_input_attribution_equals_manual_autograd(
    case: tuple[str, ServedModel], sae_id: str, layer: int, position: int | None
) -> None:
    _, served = case
    sae = served.sae(sae_id).sae
    p = len(PROMPT) - 1 if position is None else position
    model = served.lm.model
    feature = 5
    with torch.enable_grad():
        embeds = model.get_input_embeddings()(torch.tensor([PROMPT])).detach().requires_grad_(True)
        hidden = model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
        x = hidden[layer + 1][0, p]  # resid_post.layer (not the last block: no final norm)
        pre = (x - sae.b_dec.detach()) @ sae.W_enc.detach()[:, feature] + sae.b_enc.detach()[
            feature
        ]
        (grad,) = torch.autograd.grad(pre, embeds)
    want = (grad * embeds).sum(-1)[0, : p + 1].detach()
    req = FeatureInputRequest(PROMPT, sae_id, feature, position=position, top_n=3)
    res = attribute_feature(served, req)
    assert res.position == p
    assert res.pre_activation == pytest.approx(float(pre.detach()), rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(res.attributions, want.numpy(), rtol=1e-4, atol=1e-5)
    order = torch.sort(want, descending=True, stable=True).indices
    assert res.top_positive == [i for i in order.tolist() if want[i] > 0][:3]
    assert all(want[i] < 0 for i in res.top_negative)


def test_bad_input_names_the_field(case: tuple[str, ServedModel]) -> None:
    _, served = case
    vocab = served.lm.vocab_size
    with pytest.raises(InvalidArgument, match=r"^target\.id: "):
        attribute(served, AttributionRequest(PROMPT, target=vocab))
    with pytest.raises(InvalidArgument, match=r"^contrast\.id: "):
        attribute(served, AttributionRequest(PROMPT, target=1, contrast=-1))
    with pytest.raises(InvalidArgument, match=r"^position: 7 must be in \[0, 7\)"):
        attribute_feature(served, FeatureInputRequest(PROMPT, "post0", 1, position=7))
    with pytest.raises(InvalidArgument, match=r"^feature: "):
        attribute_feature(served, FeatureInputRequest(PROMPT, "post0", 64))


def test_a_module_hook_point_has_no_direct_path(case: tuple[str, ServedModel]) -> None:
    """An SAE on a module inside a block (the MLP's input norm): total effects only; the
    total identity still holds, and the manual gradient at that module's output agrees."""
    family, shared = case
    path = {"gpt2": "transformer.h.1.ln_2", "llama": "model.layers.1.post_attention_layernorm"}
    served = ServedModel.load(shared.lm.path)
    served.add_sae(random_sae(served.lm.layout.d_model, path[family], sae_id="ln2", seed=9))
    res = attribute(served, AttributionRequest(PROMPT, ["ln2"], target=40, top_n=64)).saes[0]
    assert not res.has_direct_path and res.active > 0
    assert all(e.direct == 0.0 for e in res.total_positive + res.total_negative)
    assert res.direct == EffectTerms(0.0, 0.0, 0.0, 0.0)
    module = served.lm.model.get_submodule(path[family])
    leaf: list[Tensor] = []

    def make_leaf(_m, _inp, out):
        leaf.append(out.detach().requires_grad_(True))
        return leaf[0]

    handle = module.register_forward_hook(make_leaf)
    try:
        with torch.enable_grad():
            logits = served.lm.model(torch.tensor([PROMPT])).logits[0, -1]
            (grad,) = torch.autograd.grad(logits[40], leaf[0])
    finally:
        handle.remove()
    want = float(grad[0, -1] @ leaf[0][0, -1].detach())
    assert res.total.whole == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert res.total.features + res.total.error + res.total.bias == pytest.approx(
        res.total.whole, rel=1e-4, abs=1e-4
    )
