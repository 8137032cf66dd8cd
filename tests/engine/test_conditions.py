"""Conditional steering and stop conditions, against manual loops over the HF model.

The references recompute the whole context at every step with plain torch hooks on the
HF blocks and the SAE math in numpy (``reference.encode``), checking each condition per
position by hand; nothing here goes through saeserve's hooks or intervention code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from saeserve.engine.generate import BatchGenerator, generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import (
    EngineLimits,
    FeatureCondition,
    FinishReason,
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
    TokenEvent,
    Variant,
)
from saeserve.errors import InvalidArgument, NotFound
from saeserve.model.hookpoints import HookKind, HookPoint, runs_no_later
from tests.engine import reference

PROMPT = "Once upon a time, in a land far away"
N_NEW = 8
GREEDY = SamplingParams(max_new_tokens=N_NEW, temperature=0, ignore_eos=True)


def _ids(served: ServedModel, text: str = PROMPT) -> list[int]:
    return served.lm.tokenizer(text)["input_ids"]


def _blocks(served: ServedModel) -> torch.nn.ModuleList:
    model = served.lm.model
    return model.transformer.h if served.lm.layout.family == "gpt2" else model.model.layers


def _attn(block: torch.nn.Module) -> torch.nn.Module:
    return block.attn if hasattr(block, "attn") else block.self_attn


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]


def _replace(out: object, x: torch.Tensor) -> object:
    return (x, *out[1:]) if isinstance(out, tuple) else x


def _latents(served: ServedModel, sae_id: str, x: torch.Tensor) -> np.ndarray:
    """[T, d_sae] float64 by the formulas, of x [T, d]."""
    return reference.encode(served.sae(sae_id).sae, x.detach().double().numpy())[0]


def _dec(served: ServedModel, sae_id: str, f: int) -> torch.Tensor:
    return served.sae(sae_id).sae.W_dec[f].detach().float()


Steer = Callable[[ServedModel, dict[str, torch.Tensor]], None]


def _forward(
    served: ServedModel, context: list[int], block0: Steer | None, block1: Steer | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probs [V] of the next token, and the activations seen on the way ([T, d] each:
    resid_post.0, attn_out.1, resid_mid.1), with ``block0``/``block1`` editing
    ``acts["resid_post.0"]`` / ``acts["resid_post.1"]`` in place by hand."""
    acts: dict[str, torch.Tensor] = {}
    blocks = _blocks(served)

    def post0(_m: object, _i: object, out: object) -> object:
        acts["resid_post.0"] = _first(out)[0].float().clone()
        if block0 is not None:
            block0(served, acts)
        return _replace(out, acts["resid_post.0"][None].to(_first(out).dtype))

    def attn1(_m: object, _i: object, out: object) -> None:
        acts["attn_out.1"] = _first(out)[0].float().clone()
        acts["resid_mid.1"] = acts["resid_post.0"] + acts["attn_out.1"]

    def post1(_m: object, _i: object, out: object) -> object:
        acts["resid_post.1"] = _first(out)[0].float().clone()
        if block1 is not None:
            block1(served, acts)
        return _replace(out, acts["resid_post.1"][None].to(_first(out).dtype))

    handles = [
        blocks[0].register_forward_hook(post0),
        _attn(blocks[1]).register_forward_hook(attn1),
        blocks[1].register_forward_hook(post1),
    ]
    try:
        with torch.no_grad():
            logits = served.lm.model(torch.tensor([context])).logits[0, -1].double()
    finally:
        for h in handles:
            h.remove()
    return torch.log_softmax(logits, dim=-1), acts


def _greedy(
    served: ServedModel, ids: list[int], block0: Steer | None = None, block1: Steer | None = None
) -> tuple[list[int], list[float]]:
    tokens: list[int] = []
    logprobs: list[float] = []
    for _ in range(N_NEW):
        lp, _ = _forward(served, ids + tokens, block0, block1)
        tokens.append(int(lp.argmax()))
        logprobs.append(float(lp.max()))
    return tokens, logprobs


def _run(served: ServedModel, req: GenerateRequest) -> list[TokenEvent]:
    return list(generate(served, req))


def _steered(events: list[TokenEvent]) -> tuple[list[int], list[float]]:
    ev = [e for e in events if e.variant is Variant.STEERED]
    return [e.token_id for e in ev], [float(e.logprob or 0.0) for e in ev]


def _mixed_feature(a: np.ndarray) -> int:
    """A feature active at some prompt positions and not at others ([T, d_sae])."""
    counts = (a > 0).sum(0)
    mixed = np.flatnonzero((counts > 0) & (counts < len(a)))
    return int(mixed[np.argmax(counts[mixed])])


def test_condition_at_an_earlier_point_equals_manual_hooks(served: ServedModel) -> None:
    """ADD on jump1 (resid_post.1) only where feature g of post0 (resid_post.0, TopK) is
    above 0: equals a manual loop that checks a_g per position by hand."""
    ids = _ids(served)
    _, acts = _forward(served, ids, None, None)
    g = _mixed_feature(_latents(served, "post0", acts["resid_post.0"]))
    f, value = 5, 6.0

    def block1(served: ServedModel, acts: dict[str, torch.Tensor]) -> None:
        holds = _latents(served, "post0", acts["resid_post.0"])[:, g] > 0  # [T]
        mask = torch.tensor(holds, dtype=torch.float32)[:, None]
        acts["resid_post.1"] += value * mask * _dec(served, "jump1", f)

    cond = FeatureCondition("post0", g, 0.0)
    steer = Intervention(InterventionMode.ADD, value, "jump1", f, condition=cond)
    got = _steered(_run(served, GenerateRequest(ids, GREEDY, [steer], logprobs=True)))
    want = _greedy(served, ids, block1=block1)
    assert got[0] == want[0]
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)

    # the condition mattered: neither unconditional steering nor none gives these
    always = Intervention(InterventionMode.ADD, value, "jump1", f)
    for other in ([always], []):
        lp = _steered(_run(served, GenerateRequest(ids, GREEDY, other, logprobs=True)))[1]
        assert not np.allclose(lp, got[1], atol=1e-3)


def test_condition_at_the_steered_point_reads_the_unsteered_activation(
    served: ServedModel,
) -> None:
    """CLAMP feature f of post0 where feature g of post0 (same point) is above t: the
    condition reads h before this point's steering, as the clamp reads its a_f."""
    ids = _ids(served)
    _, acts = _forward(served, ids, None, None)
    a = _latents(served, "post0", acts["resid_post.0"])
    g = _mixed_feature(a)
    t = float(np.median(a[:, g][a[:, g] > 0]))
    t32 = float(np.float32(t))
    f, value = (g + 1) % a.shape[1], 4.0

    def block0(served: ServedModel, acts: dict[str, torch.Tensor]) -> None:
        lat = _latents(served, "post0", acts["resid_post.0"])
        holds = lat[:, g].astype(np.float32) > t32
        coeff = torch.tensor((value - lat[:, f]) * holds, dtype=torch.float32)[:, None]
        acts["resid_post.0"] += coeff * _dec(served, "post0", f)

    cond = FeatureCondition("post0", g, t)
    steer = Intervention(InterventionMode.CLAMP, value, "post0", f, condition=cond)
    got = _steered(_run(served, GenerateRequest(ids, GREEDY, [steer], logprobs=True)))
    want = _greedy(served, ids, block0=block0)
    assert got[0] == want[0]
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)


def test_below_condition_on_resid_mid_equals_manual_hooks(served: ServedModel) -> None:
    """SCALE on jump1 (resid_post.1) where feature g of mid1 (resid_mid.1, TopK k=4 on a
    LayerNorm-ed input) is below t: resid_mid is an earlier point of the same block."""
    ids = _ids(served)
    _, acts = _forward(served, ids, None, None)
    a = _latents(served, "mid1", acts["resid_mid.1"])
    g = _mixed_feature(a)
    t = 1e-6  # below: wherever g is not among the 4 active latents
    f = int(np.argmax((_latents(served, "jump1", acts["resid_post.1"]) > 0).sum(0)))
    value = -3.0

    def block1(served: ServedModel, acts: dict[str, torch.Tensor]) -> None:
        holds = _latents(served, "mid1", acts["resid_mid.1"])[:, g] < np.float32(t)
        a_f = _latents(served, "jump1", acts["resid_post.1"])[:, f]
        coeff = torch.tensor((value - 1) * a_f * holds, dtype=torch.float32)[:, None]
        acts["resid_post.1"] += coeff * _dec(served, "jump1", f)

    cond = FeatureCondition("mid1", g, t, below=True)
    steer = Intervention(InterventionMode.SCALE, value, "jump1", f, condition=cond)
    got = _steered(_run(served, GenerateRequest(ids, GREEDY, [steer], logprobs=True)))
    want = _greedy(served, ids, block1=block1)
    assert got[0] == want[0]
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)


def test_rows_whose_conditions_differ_equal_each_alone_in_one_batch(served: ServedModel) -> None:
    """Three requests in one batch, the same ADD under a condition that always holds, never
    holds and holds at some positions: each equals itself alone; the first equals the
    unconditional steering and the second no steering."""
    ids = _ids(served)
    _, acts = _forward(served, ids, None, None)
    g = _mixed_feature(_latents(served, "post0", acts["resid_post.0"]))

    def steer(threshold: float | None) -> list[Intervention]:
        cond = None if threshold is None else FeatureCondition("post0", g, threshold)
        return [Intervention(InterventionMode.ADD, 6.0, "jump1", 5, condition=cond)]

    reqs = [
        GenerateRequest(ids, GREEDY, steer(-1.0), logprobs=True),
        GenerateRequest(_ids(served, "The cat sat"), GREEDY, steer(1e9), logprobs=True),
        GenerateRequest(ids, GREEDY, steer(0.0), logprobs=True),
    ]
    gen = BatchGenerator(served)
    rids = [gen.submit(r) for r in reqs]
    events: list[TokenEvent] = []
    while gen.has_work():
        events += gen.step()
    together = [_steered([e for e in events if e.request_id == rid]) for rid in rids]
    alone = [_steered(_run(served, r)) for r in reqs]
    for t, a in zip(together, alone, strict=True):
        assert t[0] == a[0]
        np.testing.assert_allclose(t[1], a[1], atol=1e-5)
    always = _steered(_run(served, GenerateRequest(ids, GREEDY, steer(None), logprobs=True)))
    never = _steered(_run(served, GenerateRequest(reqs[1].prompt_ids, GREEDY, [], logprobs=True)))
    assert together[0][0] == always[0] and together[1][0] == never[0]
    np.testing.assert_allclose(together[0][1], always[1], atol=1e-5)
    np.testing.assert_allclose(together[1][1], never[1], atol=1e-5)


def _stop_reference(
    served: ServedModel, ids: list[int], g: int, t: float, block1: Steer | None
) -> tuple[list[int], list[float], int | None]:
    """A manual greedy loop that stops at the first step whose input position has a_g of
    post0 above t; the tokens (the last one sampled at that step), the a_g of every step,
    and the step it stopped at."""
    tokens: list[int] = []
    seen: list[float] = []
    for step in range(N_NEW):
        lp, acts = _forward(served, ids + tokens, None, block1)
        tokens.append(int(lp.argmax()))
        seen.append(float(np.float32(_latents(served, "post0", acts["resid_post.0"])[-1, g])))
        if seen[-1] > np.float32(t):
            return tokens, seen, step
    return tokens, seen, None


def test_stop_condition_ends_each_variant_where_the_feature_fires(served: ServedModel) -> None:
    """A stop condition on post0 ends the steered variant at the first step whose input
    position has the feature above the threshold, as a manual loop does; the baseline
    checks it too, on its own tokens; the final event names the condition and its value."""
    ids = _ids(served)

    def block1(served: ServedModel, acts: dict[str, torch.Tensor]) -> None:
        acts["resid_post.1"] += 6.0 * _dec(served, "jump1", 5)

    # a feature whose activation along the steered text first peaks after a few steps
    d_sae = served.sae("post0").sae.d_sae
    choice = None
    for g in range(d_sae):
        _, seen, _ = _stop_reference(served, ids, g, 1e9, block1)
        m = int(np.argmax(seen))
        if m >= 2 and seen[m] > max(seen[:m]):
            choice = (g, (max(seen[:m]) + seen[m]) / 2)
            break
    assert choice is not None
    g, t = choice
    tokens, seen, stop = _stop_reference(served, ids, g, t, block1)
    assert stop is not None and stop >= 2
    base_tokens, base_seen, base_stop = _stop_reference(served, ids, g, t, None)

    req = GenerateRequest(
        ids,
        GREEDY,
        [Intervention(InterventionMode.ADD, 6.0, "jump1", 5)],
        include_baseline=True,
        stop_conditions=[FeatureCondition("post0", g, 1e9), FeatureCondition("post0", g, t)],
    )
    events = _run(served, req)
    steered = [e for e in events if e.variant is Variant.STEERED]
    baseline = [e for e in events if e.variant is Variant.BASELINE]
    assert [e.token_id for e in steered] == tokens
    assert steered[-1].finish_reason is FinishReason.CONDITION
    assert steered[-1].stop_condition == 1
    assert steered[-1].stop_activation == pytest.approx(seen[stop], abs=1e-4)
    assert all(e.finish_reason is None for e in steered[:-1])
    assert [e.token_id for e in baseline] == base_tokens
    if base_stop is None:
        assert baseline[-1].finish_reason is FinishReason.LENGTH
    else:
        assert baseline[-1].finish_reason is FinishReason.CONDITION
        assert baseline[-1].stop_activation == pytest.approx(base_seen[base_stop], abs=1e-4)


def test_condition_errors_name_the_field(served: ServedModel) -> None:
    ids = _ids(served, "Hi")

    def submit(**kw: object) -> None:
        BatchGenerator(served, limits=EngineLimits(max_stop_conditions=2)).submit(
            GenerateRequest(ids, SamplingParams(max_new_tokens=2), **kw)  # type: ignore[arg-type]
        )

    def cond_add(cond: FeatureCondition, sae: str = "post0") -> list[Intervention]:
        return [Intervention(InterventionMode.ADD, 1.0, sae, 0, condition=cond)]

    with pytest.raises(NotFound, match=r"interventions\[0\]\.condition\.sae: unknown SAE"):
        submit(interventions=cond_add(FeatureCondition("nope", 0, 0.0)))
    with pytest.raises(InvalidArgument, match=r"interventions\[0\]\.condition\.feature: 64"):
        submit(interventions=cond_add(FeatureCondition("post0", 64, 0.0)))
    with pytest.raises(InvalidArgument, match=r"interventions\[0\]\.condition\.threshold"):
        submit(interventions=cond_add(FeatureCondition("post0", 0, float("nan"))))
    # jump1 (resid_post.1) runs after post0's resid_post.0: the same position's future
    with pytest.raises(InvalidArgument, match=r"interventions\[0\]\.condition\.sae: 'jump1'"):
        submit(interventions=cond_add(FeatureCondition("jump1", 0, 0.0)))
    with pytest.raises(InvalidArgument, match=r"stop_conditions \(count\): 3 > limit 2"):
        submit(stop_conditions=[FeatureCondition("post0", 0, 0.0)] * 3)
    with pytest.raises(InvalidArgument, match=r"stop_conditions\[1\]\.feature"):
        submit(
            stop_conditions=[FeatureCondition("post0", 0, 0.0), FeatureCondition("post0", -1, 0)]
        )
    with pytest.raises(InvalidArgument, match=r"stop_conditions\[0\]\.threshold"):
        submit(stop_conditions=[FeatureCondition("post0", 0, float("inf"))])


def test_runs_no_later_orders_points_as_a_forward_reaches_them() -> None:
    def p(kind: HookKind, layer: int, path: str = "") -> HookPoint:
        return HookPoint(kind, layer, path)

    post0, mid1, post1 = (
        p(HookKind.RESID_POST, 0),
        p(HookKind.RESID_MID, 1),
        p(HookKind.RESID_POST, 1),
    )
    inner1, outer = p(HookKind.MODULE, 1, "h.1.ln_2"), p(HookKind.MODULE, -1, "wte")
    assert (
        runs_no_later(post0, post1) and runs_no_later(mid1, post1) and runs_no_later(post1, post1)
    )
    assert not runs_no_later(post1, mid1) and not runs_no_later(post1, post0)
    assert runs_no_later(p(HookKind.RESID_PRE, 1), inner1) and runs_no_later(inner1, post1)
    assert not runs_no_later(inner1, mid1) and not runs_no_later(mid1, inner1)
    assert runs_no_later(outer, outer) and not runs_no_later(outer, post1)
    assert not runs_no_later(post0, outer)
