"""Hook points against HF's own numbers: captured activations equal HF hidden states and the
inputs/outputs of the HF modules (found via hooks written here, not via saeserve's layout),
edits equal the same edit made with a plain torch hook, and hooks never outlive the context.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from saeserve.errors import InvalidArgument
from saeserve.model.hookpoints import (
    HookKind,
    HookPoint,
    forward_until,
    hooked,
    resolve_hook_point,
)
from saeserve.model.loader import LoadedModel
from tests.model.conftest import N_LAYERS, Case

KINDS = [HookKind.RESID_PRE, HookKind.ATTN_OUT, HookKind.RESID_MID, HookKind.MLP_OUT, HookKind.RESID_POST]  # fmt: skip
TOL = {"rtol": 1e-5, "atol": 1e-5}


def point(kind: HookKind, layer: int) -> HookPoint:
    return HookPoint(kind, layer)


def all_points() -> list[HookPoint]:
    return [point(k, layer) for layer in range(N_LAYERS) for k in KINDS]


def capture(lm: LoadedModel, points: list[HookPoint], input_ids: Tensor) -> dict[str, Tensor]:
    seen: dict[str, Tensor] = {}

    def recorder(p: HookPoint) -> Callable[[Tensor], None]:
        def fn(x: Tensor) -> None:
            seen[p.name] = x.detach().clone()

        return fn

    with hooked(lm, {p: recorder(p) for p in points}):
        lm.model(input_ids=input_ids)
    return seen


def first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def torch_hook(
    module: nn.Module, fn: Callable[[Tensor], Tensor | None], *, on_input: bool = False
) -> Iterator[None]:
    """A plain torch hook on `module`'s output (element 0 of a tuple) or first input."""
    if on_input:

        def pre_hook(m: nn.Module, args: Any) -> None:
            fn(args[0])  # observe only

        handle = module.register_forward_pre_hook(pre_hook)
    else:

        def hook(m: nn.Module, args: Any, output: Any) -> Any:
            new = fn(first(output))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def block(lm: LoadedModel, case: Case, layer: int, child: str = "") -> nn.Module:
    path = f"{case.blocks}.{layer}" + (f".{child}" if child else "")
    return lm.model.get_submodule(path)


def recorded(store: dict[str, Tensor], key: str) -> Callable[[Tensor], None]:
    def fn(x: Tensor) -> None:
        store[key] = x.detach().clone()

    return fn


def test_points_equal_hf_hidden_states_and_module_io(
    lm: LoadedModel, case: Case, input_ids: Tensor
) -> None:
    ours = capture(lm, all_points(), input_ids)
    ref: dict[str, Tensor] = {}
    with ExitStack() as stack:
        final_norm = lm.model.get_submodule(case.final_norm)
        stack.enter_context(torch_hook(final_norm, recorded(ref, "final_in"), on_input=True))
        for layer in range(N_LAYERS):
            attn, mlp = (
                block(lm, case, layer, case.attn_delta),
                block(lm, case, layer, case.mlp_delta),
            )
            stack.enter_context(torch_hook(attn, recorded(ref, f"attn{layer}")))
            stack.enter_context(torch_hook(mlp, recorded(ref, f"mlp{layer}")))
            if case.mid_reader:
                reader = block(lm, case, layer, case.mid_reader)
                stack.enter_context(torch_hook(reader, recorded(ref, f"mid{layer}"), on_input=True))
        hidden = lm.model(input_ids=input_ids, output_hidden_states=True).hidden_states

    assert len(hidden) == N_LAYERS + 1
    for layer in range(N_LAYERS):
        torch.testing.assert_close(ours[f"resid_pre.{layer}"], hidden[layer], rtol=0, atol=0)
        # HF's last hidden state is after the final norm; compare the norm's input instead.
        post_ref = hidden[layer + 1] if layer < N_LAYERS - 1 else ref["final_in"]
        torch.testing.assert_close(ours[f"resid_post.{layer}"], post_ref, rtol=0, atol=0)
        torch.testing.assert_close(ours[f"attn_out.{layer}"], ref[f"attn{layer}"], rtol=0, atol=0)
        torch.testing.assert_close(ours[f"mlp_out.{layer}"], ref[f"mlp{layer}"], rtol=0, atol=0)
        if case.mid_reader:
            torch.testing.assert_close(
                ours[f"resid_mid.{layer}"], ref[f"mid{layer}"], rtol=0, atol=0
            )
    assert ours["resid_post.0"].shape == (1, input_ids.shape[1], lm.layout.d_model)


def test_branches_sum_to_the_residual_stream(
    lm: LoadedModel, case: Case, input_ids: Tensor
) -> None:
    c = capture(lm, all_points(), input_ids)
    for layer in range(N_LAYERS):
        pre, attn, mid, mlp, post = (c[f"{k.value}.{layer}"] for k in KINDS)
        torch.testing.assert_close(mid, pre + attn, rtol=0, atol=0)
        if case.parallel_residual:
            torch.testing.assert_close(post, pre + attn + mlp, **TOL)
        else:
            torch.testing.assert_close(post, mid + mlp, rtol=0, atol=0)
        assert mlp.abs().max() > 1e-3 and attn.abs().max() > 1e-3  # not trivially zero


def _delta(lm: LoadedModel) -> Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(lm.layout.d_model, generator=g)


def _reference_edit(lm: LoadedModel, case: Case, kind: HookKind, layer: int, v: Tensor):
    """A plain torch hook making the same edit to the residual stream as `kind`.`layer` += v."""
    add = lambda x: x + v  # noqa: E731
    if kind is HookKind.RESID_PRE:
        return torch_hook(block(lm, case, layer - 1), add)
    if kind is HookKind.ATTN_OUT or (kind is HookKind.RESID_MID and not case.parallel_residual):
        # sequential: mid = pre + attn, so mid + v is attn + v carried on the residual
        return torch_hook(block(lm, case, layer, case.attn_delta), add)
    if kind is HookKind.MLP_OUT:
        return torch_hook(block(lm, case, layer, case.mlp_delta), add)
    # resid_post, or resid_mid in a parallel block (its MLP never reads mid)
    return torch_hook(block(lm, case, layer), add)


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_edit_equals_plain_torch_edit(
    lm: LoadedModel, case: Case, input_ids: Tensor, kind: HookKind
) -> None:
    layer = 1
    v = _delta(lm)
    base = lm.model(input_ids=input_ids).logits
    with _reference_edit(lm, case, kind, layer, v):
        expected = lm.model(input_ids=input_ids).logits
    seen: dict[str, Tensor] = {}
    fns: dict[HookPoint, list[Callable[[Tensor], Tensor | None]]] = defaultdict(list)
    fns[point(kind, layer)].append(lambda x: x + v)
    fns[point(HookKind.MLP_OUT, layer)].append(recorded(seen, "mlp"))
    fns[point(HookKind.RESID_POST, layer)].append(recorded(seen, "post"))
    mid_in: dict[str, Tensor] = {}
    with hooked(lm, fns):
        if case.mid_reader:
            with torch_hook(
                block(lm, case, layer, case.mid_reader), recorded(mid_in, "x"), on_input=True
            ):
                got = lm.model(input_ids=input_ids, output_hidden_states=True)
        else:
            got = lm.model(input_ids=input_ids, output_hidden_states=True)
    assert (got.logits - base).abs().max() > 1e-3  # the edit mattered
    torch.testing.assert_close(got.logits, expected, **TOL)

    clean = capture(lm, all_points(), input_ids)
    if kind in (HookKind.MLP_OUT, HookKind.RESID_POST):  # the block output moves by exactly v
        torch.testing.assert_close(seen["post"], clean[f"resid_post.{layer}"] + v, **TOL)
    if kind is HookKind.RESID_MID and case.mid_reader:  # the MLP reads the edited stream
        torch.testing.assert_close(mid_in["x"], clean[f"resid_mid.{layer}"] + v, **TOL)
    if kind in (HookKind.ATTN_OUT, HookKind.RESID_MID) and not case.parallel_residual:
        torch.testing.assert_close(
            seen["post"] - seen["mlp"], clean[f"resid_mid.{layer}"] + v, **TOL
        )
    if kind is HookKind.RESID_POST:  # HF's own hidden_states see the edited block output
        torch.testing.assert_close(
            got.hidden_states[layer + 1], clean[f"resid_post.{layer}"] + v, **TOL
        )


def test_resid_pre_0_edit_equals_shifted_inputs_embeds(lm: LoadedModel, input_ids: Tensor) -> None:
    v = _delta(lm)
    # GPT-2 adds position embeddings to inputs_embeds, Gemma scales inside the embedding
    # module: either way the block-0 input moves by v.
    embeds = lm.model.get_input_embeddings()(input_ids)
    expected = lm.model(inputs_embeds=embeds + v).logits
    got = forward_until(
        lm, {point(HookKind.RESID_PRE, 0): lambda x: x + v}, None, input_ids=input_ids
    )
    torch.testing.assert_close(got.logits, expected, **TOL)


def test_fns_at_one_point_run_in_order_and_points_compose(
    lm: LoadedModel, input_ids: Tensor
) -> None:
    v = _delta(lm)
    seen: dict[str, Tensor] = {}
    fns = {
        point(HookKind.RESID_PRE, 1): recorded(seen, "pre"),
        point(HookKind.ATTN_OUT, 1): [
            recorded(seen, "attn"),
            lambda x: x + v,
            recorded(seen, "attn+v"),
        ],
        point(HookKind.RESID_MID, 1): [
            recorded(seen, "mid"),
            lambda x: 2 * x,
            recorded(seen, "2mid"),
        ],
        point(HookKind.MLP_OUT, 1): recorded(seen, "mlp"),
        point(HookKind.RESID_POST, 1): recorded(seen, "post"),
    }
    with hooked(lm, fns):
        lm.model(input_ids=input_ids)
    torch.testing.assert_close(seen["attn+v"], seen["attn"] + v, rtol=0, atol=0)
    torch.testing.assert_close(seen["mid"], seen["pre"] + seen["attn"] + v, **TOL)
    torch.testing.assert_close(seen["2mid"], 2 * seen["mid"], rtol=0, atol=0)
    if not lm.layout.parallel_residual:
        torch.testing.assert_close(seen["post"], seen["2mid"] + seen["mlp"], **TOL)


def test_module_point_replaces_module_output(
    lm: LoadedModel, case: Case, input_ids: Tensor
) -> None:
    p = resolve_hook_point(case.final_norm, lm.layout, lm.model)
    assert p.kind is HookKind.MODULE
    out = forward_until(lm, {p: torch.zeros_like}, None, input_ids=input_ids)
    # no LM head here has a bias, and Gemma-2's soft cap maps 0 to 0
    torch.testing.assert_close(out.logits, torch.zeros_like(out.logits), rtol=0, atol=0)


def _hook_state(model: nn.Module) -> list[tuple[str, int, int, int]]:
    return [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_with_kwargs))
        for name, m in model.named_modules()
    ]


def test_hooks_removed_after_error_stop_and_normal_exit(
    lm: LoadedModel, case: Case, input_ids: Tensor
) -> None:
    lm.model(input_ids=input_ids, output_hidden_states=True)  # HF installs its own hooks once
    before = _hook_state(lm.model)

    def boom(x: Tensor) -> None:
        raise RuntimeError("boom")

    fns = {p: (lambda x: None) for p in all_points()}
    fns[point(HookKind.MLP_OUT, 1)] = boom
    module_point = resolve_hook_point(case.final_norm, lm.layout, lm.model)
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooked(lm, {**fns, module_point: lambda x: None}),
    ):
        assert _hook_state(lm.model) != before  # hooks are in place inside
        lm.model(input_ids=input_ids)
    assert _hook_state(lm.model) == before
    assert forward_until(lm, fns, point(HookKind.RESID_MID, 1), input_ids=input_ids) is None
    assert _hook_state(lm.model) == before
    with pytest.raises(KeyError), hooked(lm, fns):
        raise KeyError("raised in the with-body")
    assert _hook_state(lm.model) == before


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_stop_after_runs_exactly_the_earlier_points(
    lm: LoadedModel, case: Case, input_ids: Tensor, kind: HookKind
) -> None:
    stop = point(kind, 1)
    fired: list[HookPoint] = []

    def marker(p: HookPoint) -> Callable[[Tensor], None]:
        return lambda x: fired.append(p)

    final: list[bool] = []
    with torch_hook(lm.model.get_submodule(case.final_norm), lambda x: final.append(True)):
        out = forward_until(lm, {p: marker(p) for p in all_points()}, stop, input_ids=input_ids)
    assert out is None
    assert not final
    assert fired == sorted(
        (p for p in all_points() if p.depth <= stop.depth), key=lambda p: p.depth
    )
    out = forward_until(lm, {}, None, input_ids=input_ids)
    assert out.logits.shape == (*input_ids.shape, lm.vocab_size)


def test_stop_after_module_points(lm: LoadedModel, case: Case, input_ids: Tensor) -> None:
    inner = resolve_hook_point(
        f"{case.blocks}.1.{'ln_1' if case.family == 'gpt2' else 'input_layernorm'}",
        lm.layout,
        lm.model,
    )
    assert (inner.kind, inner.layer, inner.depth) == (HookKind.MODULE, 1, (1, 4))
    fired: list[str] = []
    fns = {
        p: (lambda x, p=p: fired.append(p.name))
        for p in [inner, point(HookKind.RESID_POST, 1), point(HookKind.RESID_PRE, 2)]
    }
    assert forward_until(lm, fns, inner, input_ids=input_ids) is None
    assert fired == [inner.name, "resid_post.1"]  # waits for the end of the enclosing block

    outer = resolve_hook_point(case.final_norm, lm.layout, lm.model)
    head: list[bool] = []
    with torch_hook(lm.model.get_output_embeddings(), lambda x: head.append(True)):
        assert forward_until(lm, {outer: lambda x: None}, outer, input_ids=input_ids) is None
    assert not head  # the unembedding never ran


def test_aliases_resolve_to_the_same_point(lm: LoadedModel, case: Case) -> None:
    resolve = lambda name: resolve_hook_point(name, lm.layout, lm.model)  # noqa: E731
    openai = {"resid_post_mlp": "resid_post", "resid_post_attn": "resid_mid", "resid_delta_attn": "attn_out", "resid_delta_mlp": "mlp_out"}  # fmt: skip
    relative_blocks = case.blocks.split(".", 1)[1]  # e.g. "layers": path inside the base model
    for layer in range(N_LAYERS):
        for kind in KINDS:
            expected = HookPoint(kind, layer)
            assert resolve(f"{kind.value}.{layer}") == expected
            assert resolve(f"blocks.{layer}.hook_{kind.value}") == expected
            assert resolve(f"{kind.value}.{layer}").name == f"{kind.value}.{layer}"
        for location, kind_name in openai.items():
            assert resolve(f"{location}.{layer}") == HookPoint(HookKind(kind_name), layer)
        assert resolve(f"{case.blocks}.{layer}") == HookPoint(HookKind.RESID_POST, layer)
        assert resolve(f"{relative_blocks}.{layer}") == HookPoint(HookKind.RESID_POST, layer)
        assert resolve(f"{case.blocks}.{layer}.{case.attn_delta}") == HookPoint(
            HookKind.ATTN_OUT, layer
        )
        assert resolve(f"{case.blocks}.{layer}.{case.mlp_delta}") == HookPoint(
            HookKind.MLP_OUT, layer
        )
    final = resolve(case.final_norm)
    assert (final.kind, final.layer, final.name, final.depth) == (
        HookKind.MODULE,
        -1,
        case.final_norm,
        (N_LAYERS, 0),
    )
    assert [p.depth for p in (HookPoint(k, 2) for k in KINDS)] == [(2, i) for i in range(5)]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resid_post.3", "layer 3, out of range; the model has 3 layers (0..2)"),
        ("blocks.7.hook_resid_pre", "layer 7, out of range; the model has 3 layers (0..2)"),
        ("resid_post_mlp.5", "layer 5, out of range"),
        ("resid_post", "accepted forms: resid_pre.L"),
        ("resid_post.-1", "accepted forms"),
        ("blocks.1.hook_z", "accepted forms"),
        ("model.layers.9", "accepted forms"),
        ("", "accepted forms"),
        ("model.layers", "container module"),
    ],
)
def test_bad_names_raise_invalid_argument(
    loaded: dict[str, LoadedModel], name: str, message: str
) -> None:
    lm = loaded["llama"]
    with pytest.raises(InvalidArgument, match="hook_point") as err:
        resolve_hook_point(name, lm.layout, lm.model)
    assert message in str(err.value)


def test_bad_points_and_replacements_fail_loudly(loaded: dict[str, LoadedModel]) -> None:
    lm = loaded["llama"]
    input_ids = torch.tensor([[5, 6, 7]])
    with (
        pytest.raises(InvalidArgument, match=r"layer 5, out of range.*0\.\.2"),
        hooked(lm, {point(HookKind.RESID_POST, 5): lambda x: None}),
    ):
        pass
    with (
        pytest.raises(InvalidArgument, match="does not exist"),
        hooked(lm, {HookPoint(HookKind.MODULE, -1, "model.nope"): lambda x: None}),
    ):
        pass
    with pytest.raises(
        ValueError, match=r"resid_post.0: a hook returned shape \(2, 32\), expected \(1, 3, 32\)"
    ):
        forward_until(
            lm, {point(HookKind.RESID_POST, 0): lambda x: x[0, :2]}, None, input_ids=input_ids
        )


def test_module_without_tensor_output_is_invalid_argument(loaded: dict[str, LoadedModel]) -> None:
    lm = loaded["llama"]
    base = resolve_hook_point("model", lm.layout, lm.model)  # LlamaModel returns a ModelOutput
    with pytest.raises(
        InvalidArgument, match="hook_point: 'model' outputs a BaseModelOutputWithPast"
    ):
        forward_until(lm, {base: lambda x: None}, None, input_ids=torch.tensor([[5, 6]]))


def test_forward_until_builds_no_cache_unless_asked(loaded: dict[str, LoadedModel]) -> None:
    lm = loaded["llama"]
    ids = torch.tensor([[5, 6, 7]])
    assert forward_until(lm, {}, None, input_ids=ids).cache is None
    assert forward_until(lm, {}, None, input_ids=ids, use_cache=True).cache is not None
