"""Named hook points on a causal LM, and a context manager that reads or rewrites them.

A ``HookPoint`` is a place in the residual stream of block ``L``: ``resid_pre`` (the block's
input), ``attn_out`` (what attention adds), ``resid_mid`` (``resid_pre + attn_out``),
``mlp_out`` (what the MLP adds) and ``resid_post`` (the block's output), or any named module
(``MODULE``). ``resolve_hook_point`` accepts the portable names (``resid_post.3``), the SAELens
names (``blocks.3.hook_resid_post``), the OpenAI location names written ``<location>.<L>``
(``resid_post_mlp.3``, ``resid_post_attn.3``, ``resid_delta_attn.3``, ``resid_delta_mlp.3``)
and module paths (``model.layers.3.mlp``, or relative to the base model: ``layers.3.mlp``);
a module path that is a block, or the module whose output is a residual branch, resolves to
the same point as its portable name. ``hooked(lm, {point: fn})`` installs torch hooks so that
each fn sees ``[batch, seq, d_model]`` activations in model dtype and may return a
replacement; it removes every hook on exit, and can stop the forward pass early.

Parallel-residual GPT-NeoX: ``resid_mid`` is still ``resid_pre + attn_out`` and editing it
changes the block output, but that block's MLP reads ``resid_pre``, not ``resid_mid``.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from saeserve.errors import InvalidArgument
from saeserve.model.architectures import ArchitectureLayout

if TYPE_CHECKING:
    from saeserve.model.loader import LoadedModel

HookFn = Callable[[Tensor], Tensor | None]
"""Receives an activation [batch, seq, d] in model dtype; returns a same-shape
replacement, or None to leave it unchanged."""


class HookKind(StrEnum):
    """What a hook point reads in its block."""

    RESID_PRE = "resid_pre"
    RESID_MID = "resid_mid"
    RESID_POST = "resid_post"
    ATTN_OUT = "attn_out"
    MLP_OUT = "mlp_out"
    MODULE = "module"


# Order of the points inside one block, as a forward pass reaches them.
_ORDER = {
    HookKind.RESID_PRE: 0,
    HookKind.ATTN_OUT: 1,
    HookKind.RESID_MID: 2,
    HookKind.MLP_OUT: 3,
    HookKind.RESID_POST: 4,
}
_UNKNOWN_DEPTH_LAYER = 1 << 30


@dataclass(frozen=True)
class HookPoint:
    """One hook point. `layer` is the block index; for MODULE points, the index of the block
    that contains the module, or -1 when it lies outside every block (embedding, final norm)."""

    kind: HookKind
    layer: int
    module_path: str = ""
    n_layers: int = field(default=-1, compare=False, repr=False)
    """Layer count of the model, recorded by resolve_hook_point for `depth`."""

    @property
    def name(self) -> str:
        """Canonical name: ``"resid_post.3"``, or the module path for MODULE points."""
        if self.kind is HookKind.MODULE:
            return self.module_path
        return f"{self.kind.value}.{self.layer}"

    @property
    def depth(self) -> tuple[int, int]:
        """(layer, order) at which the point has run; a forward pass may stop after the
        deepest point. Orders: resid_pre 0, attn_out 1, resid_mid 2, mlp_out 3, resid_post 4.
        A MODULE inside block L counts as (L, 4) (stopping there waits for the block's end);
        one outside every block as (n_layers, 0), i.e. no early stop."""
        if self.kind is not HookKind.MODULE:
            return (self.layer, _ORDER[self.kind])
        if self.layer >= 0:
            return (self.layer, 4)
        return (self.n_layers if self.n_layers >= 0 else _UNKNOWN_DEPTH_LAYER, 0)

    def __str__(self) -> str:
        return self.name


def runs_no_later(a: HookPoint, b: HookPoint) -> bool:
    """Whether, at one position of a forward pass, point ``a``'s activation is final when
    point ``b``'s hooks run: ``a`` is ``b``, or ``a`` certainly runs first. Within block L
    the points run resid_pre, attn_out, resid_mid, mlp_out, resid_post; a MODULE inside
    block L runs somewhere after resid_pre.L and before resid_post.L, and one outside every
    block (embedding, final norm) is ordered only against itself."""
    return a == b or _span(a)[1] < _span(b)[0]


def _span(p: HookPoint) -> tuple[tuple[int, int], tuple[int, int]]:
    """(earliest, latest) (layer, tick) at which a point's hooks may run; ticks are twice
    ``_ORDER`` so a module inside a block fits strictly between its resid_pre and
    resid_post."""
    if p.kind is not HookKind.MODULE:
        tick = (p.layer, 2 * _ORDER[p.kind])
        return tick, tick
    if p.layer >= 0:
        return (p.layer, 1), (p.layer, 2 * _ORDER[HookKind.RESID_POST] - 1)
    return (-1, 0), (_UNKNOWN_DEPTH_LAYER, 0)


class StopForward(Exception):
    """Raised inside a hook to end the forward pass once the `stop_after` point has run."""


_KINDS = "resid_pre|resid_mid|resid_post|attn_out|mlp_out"
_PORTABLE = re.compile(rf"^({_KINDS})\.(\d+)$")
_SAELENS = re.compile(rf"^blocks\.(\d+)\.hook_({_KINDS})$")
OPENAI_LOCATIONS: dict[str, HookKind] = {
    "resid_post_mlp": HookKind.RESID_POST,
    "resid_post_attn": HookKind.RESID_MID,
    "resid_delta_attn": HookKind.ATTN_OUT,
    "resid_delta_mlp": HookKind.MLP_OUT,
}
_OPENAI = re.compile(rf"^({'|'.join(OPENAI_LOCATIONS)})\.(\d+)$")
ACCEPTED_FORMS = (
    "resid_pre.L, resid_mid.L, resid_post.L, attn_out.L, mlp_out.L; "
    "blocks.L.hook_resid_pre (SAELens, likewise hook_resid_mid/resid_post/attn_out/mlp_out); "
    "resid_post_mlp.L, resid_post_attn.L, resid_delta_attn.L, resid_delta_mlp.L (OpenAI); "
    "or a module path such as 'model.layers.0.mlp'"
)


def _layer_point(kind: HookKind, layer: int, name: str, layout: ArchitectureLayout) -> HookPoint:
    if not 0 <= layer < layout.n_layers:
        raise InvalidArgument(
            f"hook_point: {name!r} has layer {layer}, out of range; the model has "
            f"{layout.n_layers} layers (0..{layout.n_layers - 1})"
        )
    return HookPoint(kind, layer, n_layers=layout.n_layers)


def _module_point(path: str, layout: ArchitectureLayout, model: nn.Module) -> HookPoint:
    """The point of module `path`: a block or branch maps to its portable point."""
    module = model.get_submodule(path)
    if isinstance(module, nn.ModuleList | nn.ModuleDict) or module is model:
        raise InvalidArgument(
            f"hook_point: {path!r} is a container module that never runs itself; name one "
            f"of its children or use {ACCEPTED_FORMS}"
        )
    prefix = layout.blocks_path + "."
    if not path.startswith(prefix):
        return HookPoint(HookKind.MODULE, -1, path, n_layers=layout.n_layers)
    layer = int(path[len(prefix) :].split(".", 1)[0])
    if path == layout.block_path(layer):
        return HookPoint(HookKind.RESID_POST, layer, n_layers=layout.n_layers)
    if path == layout.attn_out_path(layer):
        return HookPoint(HookKind.ATTN_OUT, layer, n_layers=layout.n_layers)
    if path == layout.mlp_out_path(layer):
        return HookPoint(HookKind.MLP_OUT, layer, n_layers=layout.n_layers)
    return HookPoint(HookKind.MODULE, layer, path, n_layers=layout.n_layers)


def resolve_hook_point(name: str, layout: ArchitectureLayout, model: nn.Module) -> HookPoint:
    """The HookPoint `name` refers to in `model`; InvalidArgument naming the accepted forms."""
    name = name.strip()
    if match := _PORTABLE.match(name):
        return _layer_point(HookKind(match[1]), int(match[2]), name, layout)
    if match := _SAELENS.match(name):
        return _layer_point(HookKind(match[2]), int(match[1]), name, layout)
    if match := _OPENAI.match(name):
        return _layer_point(OPENAI_LOCATIONS[match[1]], int(match[2]), name, layout)
    if name:
        modules = dict(model.named_modules())
        base_prefix = str(getattr(model, "base_model_prefix", "") or "")
        for path in (name, f"{base_prefix}.{name}" if base_prefix else ""):
            if path and path in modules:
                return _module_point(path, layout, model)
    raise InvalidArgument(
        f"hook_point: {name!r} is not a hook point of this {layout.model_type or layout.family} "
        f"model ({layout.n_layers} layers); accepted forms: {ACCEPTED_FORMS}"
    )


# ---------------------------------------------------------------- installing hooks


def _first(output: Any, point: HookPoint) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise InvalidArgument(
        f"hook_point: {point.name!r} outputs a {type(output).__name__}, not a tensor or a "
        "tuple starting with one; name a module inside it"
    )


def _with_first(output: Any, value: Tensor) -> Any:
    if isinstance(output, Tensor):
        return value
    return type(output)((value, *output[1:]))


def _apply(fns: Sequence[HookFn], x: Tensor, point: HookPoint) -> Tensor | None:
    """Run `fns` in order on `x`; the final replacement, or None when no fn replaced it."""
    changed = False
    for fn in fns:
        y = fn(x)
        if y is None:
            continue
        if y.shape != x.shape:
            raise ValueError(
                f"hook point {point.name}: a hook returned shape {tuple(y.shape)}, "
                f"expected {tuple(x.shape)}"
            )
        x = y if y.dtype == x.dtype else y.to(x.dtype)
        changed = True
    return x if changed else None


@dataclass
class _LayerPlan:
    """The fns of one block's five points, and whether to stop after one of them."""

    fns: dict[HookKind, list[HookFn]] = field(default_factory=dict)
    stop: HookKind | None = None

    def get(self, kind: HookKind) -> list[HookFn]:
        return self.fns.get(kind, [])

    def wants(self, kind: HookKind) -> bool:
        return kind in self.fns or self.stop is kind


def _as_list(fns: HookFn | Sequence[HookFn]) -> list[HookFn]:
    return list(fns) if isinstance(fns, Sequence) else [fns]


_BLOCKS: weakref.WeakKeyDictionary[nn.Module, nn.ModuleList] = weakref.WeakKeyDictionary()


def _blocks(model: nn.Module, layout: ArchitectureLayout) -> nn.ModuleList:
    """``layout.blocks(model)``, looked up once per model (hooks are installed for every
    prefill and Decompose, and the module-path walk costs more than registering one)."""
    blocks = _BLOCKS.get(model)
    if blocks is None:
        blocks = _BLOCKS[model] = layout.blocks(model)
    return blocks


def _install_layer(
    model: nn.Module, layout: ArchitectureLayout, layer: int, plan: _LayerPlan
) -> list[RemovableHandle]:
    handles: list[RemovableHandle] = []
    block = _blocks(model, layout)[layer]
    resid_pre: dict[str, Tensor] = {}  # the block's (possibly replaced) input, for resid_mid

    needs_mid = plan.wants(HookKind.RESID_MID)
    if plan.wants(HookKind.RESID_PRE) or needs_mid:
        point = HookPoint(HookKind.RESID_PRE, layer)

        def pre_hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            x = args[0] if args else kwargs["hidden_states"]
            new = _apply(plan.get(HookKind.RESID_PRE), x, point)
            resid_pre["x"] = x if new is None else new
            if plan.stop is HookKind.RESID_PRE:
                raise StopForward(point.name)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True))

    if plan.wants(HookKind.ATTN_OUT) or needs_mid:
        attn_point = HookPoint(HookKind.ATTN_OUT, layer)
        mid_point = HookPoint(HookKind.RESID_MID, layer)

        def attn_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            attn = _first(output, attn_point)
            new_attn = _apply(plan.get(HookKind.ATTN_OUT), attn, attn_point)
            if new_attn is not None:
                attn = new_attn
            if plan.stop is HookKind.ATTN_OUT:
                raise StopForward(attn_point.name)
            if needs_mid:
                pre = resid_pre.pop("x")
                # The block adds attn to pre; a new mid is written back as the attn delta.
                new_mid = _apply(plan.get(HookKind.RESID_MID), pre + attn, mid_point)
                if plan.stop is HookKind.RESID_MID:
                    raise StopForward(mid_point.name)
                if new_mid is not None:
                    new_attn = attn = new_mid - pre
            return None if new_attn is None else _with_first(output, attn)

        attn_module = layout.attn_out_module(model, layer)
        handles.append(attn_module.register_forward_hook(attn_hook, prepend=True))

    if plan.wants(HookKind.MLP_OUT):
        handles.append(
            _output_hook(
                layout.mlp_out_module(model, layer),
                HookPoint(HookKind.MLP_OUT, layer),
                plan.get(HookKind.MLP_OUT),
                stop=plan.stop is HookKind.MLP_OUT,
            )
        )
    if plan.wants(HookKind.RESID_POST):
        handles.append(
            _output_hook(
                block,
                HookPoint(HookKind.RESID_POST, layer),
                plan.get(HookKind.RESID_POST),
                stop=plan.stop is HookKind.RESID_POST,
            )
        )
    return handles


def _output_hook(
    module: nn.Module, point: HookPoint, fns: list[HookFn], *, stop: bool
) -> RemovableHandle:
    """A forward hook that runs `fns` on the module's output (element 0 of a tuple)."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        new = _apply(fns, _first(output, point), point)
        if stop:
            raise StopForward(point.name)
        return None if new is None else _with_first(output, new)

    # prepend: run before HF's own output-capturing hooks, so they record the edited value.
    return module.register_forward_hook(hook, prepend=True)


def _check_point(point: HookPoint, layout: ArchitectureLayout, model: nn.Module) -> None:
    if point.kind is HookKind.MODULE:
        try:
            model.get_submodule(point.module_path)
        except AttributeError as exc:
            raise InvalidArgument(
                f"hook_point: module {point.module_path!r} does not exist in this model"
            ) from exc
    elif not 0 <= point.layer < layout.n_layers:
        raise InvalidArgument(
            f"hook_point: {point.name!r} has layer {point.layer}, out of range; the model has "
            f"{layout.n_layers} layers (0..{layout.n_layers - 1})"
        )


@contextmanager
def hooked(
    lm: LoadedModel,
    fns: Mapping[HookPoint, HookFn | Sequence[HookFn]],
    *,
    stop_after: HookPoint | None = None,
) -> Iterator[None]:
    """Install hooks on `lm.model` so each fn sees (and may replace) its point's activation.

    Several fns at one point run in order, each on the previous one's result. Within a block
    points run as resid_pre, attn_out, resid_mid, mlp_out, resid_post. With `stop_after`, the
    forward pass raises StopForward right after that point's fns ran (after the whole block
    for a MODULE inside a block). Every hook is removed on exit, also on error. Not safe for
    concurrent forward passes on the same model from several threads.
    """
    model, layout = lm.model, lm.layout
    plans: dict[int, _LayerPlan] = {}
    modules: dict[str, tuple[HookPoint, list[HookFn], bool]] = {}
    points = list(fns) + ([stop_after] if stop_after is not None else [])
    for point in points:
        _check_point(point, layout, model)
    for point, point_fns in fns.items():
        if point.kind is HookKind.MODULE:
            entry = modules.setdefault(point.module_path, (point, [], False))
            entry[1].extend(_as_list(point_fns))
        else:
            plan = plans.setdefault(point.layer, _LayerPlan())
            plan.fns.setdefault(point.kind, []).extend(_as_list(point_fns))
    if stop_after is not None:
        if stop_after.kind is not HookKind.MODULE:
            plans.setdefault(stop_after.layer, _LayerPlan()).stop = stop_after.kind
        elif stop_after.layer >= 0:  # wait for the end of the enclosing block
            plans.setdefault(stop_after.layer, _LayerPlan()).stop = HookKind.RESID_POST
        else:
            _, stop_fns, _ = modules.get(stop_after.module_path, (stop_after, [], False))
            modules[stop_after.module_path] = (stop_after, stop_fns, True)

    handles: list[RemovableHandle] = []
    try:
        for layer, plan in plans.items():
            handles += _install_layer(model, layout, layer, plan)
        for path, (point, point_fns, stop) in modules.items():
            handles.append(_output_hook(model.get_submodule(path), point, point_fns, stop=stop))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_until(
    lm: LoadedModel,
    fns: Mapping[HookPoint, HookFn | Sequence[HookFn]],
    stop_after: HookPoint | None,
    **model_kwargs: Any,
) -> Any:
    """Run ``lm.model(**model_kwargs)`` under `hooked`; None if it stopped at `stop_after`,
    else the model output. Without a ``cache`` kwarg, ``use_cache`` defaults to False (HF
    would otherwise build a throwaway KV cache). A stopped pass may leave a cache partly
    updated: do not pass a cache you will reuse together with `stop_after`."""
    if "cache" not in model_kwargs and "past_key_values" not in model_kwargs:
        model_kwargs.setdefault("use_cache", False)
    with hooked(lm, fns, stop_after=stop_after):
        try:
            return lm.model(**model_kwargs)
        except StopForward:
            return None
