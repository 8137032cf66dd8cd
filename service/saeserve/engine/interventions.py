"""Steering: the intervention math of DESIGN.md as hook functions over a batch.

With a = encode(h) at an SAE's hook point and d_f = W_dec[f] (SAE space):

    ADD     h += value * d_f          (normalize: d_f / |d_f|)
    CLAMP   h += (value - a_f) * d_f
    SCALE   h += (value - 1) * a_f * d_f
    ABLATE  h -= a_f * d_f
    VECTOR  h += value * v            (model space; normalize: v / |v|)

The reconstruction error is never touched: only the component along d_f moves. For SAEs
that normalize their input the change is made in SAE space and mapped back (times the
token's std for LayerNorm, divided by the dataset scale). All a_f are read from the
unsteered h, so several interventions on one SAE do not see each other.

Every row of a batch carries its own list; ``SteeringPlan`` turns the rows' lists into one
vectorised hook per hook point, so a batch of different requests costs one pass and no
row can change another. A plan is built once per batch composition: coefficients,
directions and encoder bias are stacked tensors then, so a decode step costs the SAE's
encoder matmul and top-k plus a few small ops, and ADD and VECTOR never run the encoder.
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.engine.types import Intervention, InterventionMode, PositionKind, TrackedFeature
from saeserve.errors import InvalidArgument
from saeserve.model.hookpoints import HookPoint
from saeserve.sae.base import Activation, InputNorm, Sae


@dataclass(frozen=True)
class ResolvedIntervention:
    """A validated intervention bound to its SAE (or raw direction) and hook point."""

    mode: InterventionMode
    value: float
    point: HookPoint
    positions: PositionKind
    sae: HookedSae | None = None
    feature: int = -1
    vector: Tensor | None = None  # [d_model], already unit-norm if normalize was asked
    normalize: bool = False
    indices: tuple[int, ...] = ()


def resolve_interventions(
    served: ServedModel,
    interventions: Sequence[Intervention],
    prompt_len: int,
    *,
    max_abs_value: float = math.inf,
    field_name: str = "interventions",
) -> list[ResolvedIntervention]:
    """Validate each intervention against the model and SAEs, naming the field on error."""
    return [
        _resolve_one(served, iv, prompt_len, max_abs_value, f"{field_name}[{i}]")
        for i, iv in enumerate(interventions)
    ]


def _resolve_one(
    served: ServedModel, iv: Intervention, prompt_len: int, max_abs: float, where: str
) -> ResolvedIntervention:
    try:
        mode = InterventionMode(iv.mode)
    except ValueError:
        raise InvalidArgument(f"{where}.mode: unknown mode {iv.mode!r}") from None
    if not math.isfinite(iv.value):
        raise InvalidArgument(f"{where}.value: must be finite, got {iv.value}")
    if abs(iv.value) > max_abs:
        raise InvalidArgument(f"{where}.value: |{iv.value}| exceeds the limit of {max_abs}")
    positions = PositionKind(iv.positions)
    indices = tuple(iv.indices)
    if positions is PositionKind.INDICES:
        if not indices:
            raise InvalidArgument(f"{where}.indices: positions INDICES needs at least one index")
        for j, p in enumerate(indices):
            if not 0 <= p < prompt_len:
                raise InvalidArgument(
                    f"{where}.indices[{j}]: {p} must be in [0, {prompt_len}) (prompt tokens)"
                )
    elif indices:
        raise InvalidArgument(
            f"{where}.indices: only allowed with positions INDICES, got {positions}"
        )

    if mode is InterventionMode.VECTOR:
        point = (
            served.hook_point(iv.hook_point, field_name=f"{where}.hook_point")
            if iv.hook_point
            else None
        )
        if point is None:
            raise InvalidArgument(f"{where}.hook_point: VECTOR needs a hook point")
        d_model = served.lm.layout.d_model
        if iv.vector is None or len(iv.vector) != d_model:
            got = 0 if iv.vector is None else len(iv.vector)
            raise InvalidArgument(
                f"{where}.vector: needs exactly d_model={d_model} values, got {got}"
            )
        vec = torch.tensor(iv.vector, dtype=torch.float32, device=served.lm.device)
        if not torch.isfinite(vec).all():
            raise InvalidArgument(f"{where}.vector: all values must be finite")
        if iv.normalize:
            norm = vec.norm()
            if norm == 0:
                raise InvalidArgument(f"{where}.vector: a zero vector cannot be normalized")
            vec = vec / norm
        return ResolvedIntervention(mode, iv.value, point, positions, vector=vec, indices=indices)

    if not iv.sae_id:
        raise InvalidArgument(f"{where}.sae: {mode} needs an SAE id")
    hooked = served.sae(iv.sae_id, field_name=f"{where}.sae")
    if not 0 <= iv.feature < hooked.sae.d_sae:
        raise InvalidArgument(
            f"{where}.feature: {iv.feature} must be in [0, {hooked.sae.d_sae}) (d_sae)"
        )
    if iv.normalize and mode is not InterventionMode.ADD:
        raise InvalidArgument(f"{where}.normalize: only meaningful for ADD and VECTOR, not {mode}")
    return ResolvedIntervention(
        mode,
        iv.value,
        hooked.hook_point,
        positions,
        sae=hooked,
        feature=iv.feature,
        normalize=iv.normalize,
        indices=indices,
    )


def resolve_tracked(
    served: ServedModel, track: Sequence[TrackedFeature], *, field_name: str = "track"
) -> list[tuple[HookedSae, int]]:
    out = []
    for i, t in enumerate(track):
        hooked = served.sae(t.sae_id, field_name=f"{field_name}[{i}].sae")
        if not 0 <= t.feature < hooked.sae.d_sae:
            raise InvalidArgument(
                f"{field_name}[{i}].feature: {t.feature} must be in [0, {hooked.sae.d_sae}) (d_sae)"
            )
        out.append((hooked, t.feature))
    return out


_FOLDED_BIAS: weakref.WeakKeyDictionary[Sae, Tensor] = weakref.WeakKeyDictionary()


def _folded_bias(sae: Sae) -> Tensor:
    """[d_sae] the encoder bias with b_dec folded in (when the SAE subtracts b_dec from its
    input), computed once per SAE (served weights never change): plans are rebuilt whenever
    a batch changes."""
    bias = _FOLDED_BIAS.get(sae)
    if bias is None:
        # a plain tensor even when first asked inside inference mode, so plans built
        # outside it can use it too
        with torch.inference_mode(False), torch.no_grad():
            bias = sae.b_enc.detach().clone()
            if sae.cfg.apply_b_dec_to_input:
                bias -= sae.b_dec @ sae.W_enc
        _FOLDED_BIAS[sae] = bias
    return bias


class _FeatureReader:
    """a_f of a few features of one SAE, straight from model-space h.

    Precomputed once per plan: the encoder bias with b_dec folded in (and for JumpReLU
    and ReLU SAEs only the features' encoder columns), so a step runs one matmul and a
    few element-wise ops. TopK needs every pre-activation: a feature is active only among
    the k largest.
    """

    def __init__(self, sae: Sae, features: list[int]) -> None:
        self.sae = sae
        cfg = sae.cfg
        dev = sae.W_enc.device
        self.features = torch.tensor(features, device=dev)
        bias = _folded_bias(sae)
        self.weight: Tensor = sae.W_enc  # [d_in, d_sae], or [d_in, E]
        self.bias = bias  # [d_sae], or [E]
        if cfg.activation is not Activation.TOPK:
            self.weight = sae.W_enc[:, self.features].contiguous()
            self.bias = bias[self.features]
        self.threshold = sae.threshold[self.features]  # [E], JumpReLU only
        k = cfg.k or 0
        self.bound_first = dev.type == "cpu" and k > 0 and sae.d_sae % k == 0
        # TopK: a_f = relu(pre_f) when f is among the k largest, so a feature whose own
        # pre-activation is <= 0 is inactive whatever the others are. On CPU a decode step
        # first computes just the steered columns and skips the full encoder if that rules
        # every feature out (the full encoder reads all of W_enc every step).
        self.columns_first = dev.type == "cpu" and cfg.activation is Activation.TOPK
        if self.columns_first:
            self.col_weight = sae.W_enc[:, self.features].contiguous()  # [d_in, E]
            self.col_bias = bias[self.features]  # [E]

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x for ``latents`` and, for LayerNorm SAEs, the per-token std [..., 1] (else None:
        a dataset scale is constant, applied by ``latents`` and folded into directions)."""
        if self.sae.cfg.input_norm is InputNorm.LAYERNORM:
            x_n, ctx = self.sae.normalize(x)
            return x_n, ctx.scale.float()
        return (x if x.dtype == self.weight.dtype else x.to(self.weight.dtype)), None

    def latents(self, x_n: Tensor, wanted: Tensor | None = None) -> Tensor | None:
        """[R, S, E] float: every feature's a_f at every row and position of ``normalize``'s
        x [R, S, d_in]; None when all are 0 (found without the top-k: see below). Per decode
        step this is the whole encoder: a handful of ops. ``wanted`` (bool, broadcastable
        to [R, S, E]) marks the entries a caller reads; the others may come back 0."""
        cfg = self.sae.cfg
        scale = cfg.norm_scale if cfg.input_norm is InputNorm.SCALE else 1.0
        flat = x_n.reshape(-1, x_n.shape[-1])
        n_tokens, n_features = len(flat), len(self.features)
        live_rows: Tensor | None = None  # the tokens the full encoder must see
        live: Tensor | None = None  # [tokens, E]: entries that can be active and are wanted
        if self.columns_first and n_tokens <= _BOUND_FIRST_ROWS:
            own = torch.addmm(self.col_bias, flat, self.col_weight, alpha=scale)  # [R*S, E]
            live = own > 0
            if wanted is not None:
                live &= wanted.expand(*x_n.shape[:-1], n_features).reshape(n_tokens, -1)
            if n_tokens == 1:  # one host sync and no index ops: the batch-1 decode step
                if not bool(live.any()):
                    return None
            else:
                live_rows = live.any(dim=-1).nonzero().flatten()
                if len(live_rows) == 0:
                    return None
                if len(live_rows) == n_tokens:
                    live_rows = None
                else:  # the encoder runs only where a wanted feature can be active
                    flat = flat.index_select(0, live_rows)
                    live = live.index_select(0, live_rows)
        a = self._encode(flat, scale, live)
        if a is None:
            return None
        if live_rows is not None:
            a = a.new_zeros(n_tokens, n_features).index_copy_(0, live_rows, a)
        a = a.view(*x_n.shape[:-1], -1)
        return a if a.dtype == torch.float32 else a.float()

    def _encode(self, flat: Tensor, scale: float, live: Tensor | None) -> Tensor | None:
        """[N, E] a_f of the features at each of the N tokens of ``flat``; None if all 0.
        ``live`` [N, E] (or None: all) marks the entries that matter."""
        cfg = self.sae.cfg
        pre = torch.addmm(self.bias, flat, self.weight, alpha=scale)  # [N, d_sae or E]
        if cfg.activation is Activation.TOPK:
            k = cfg.k or 0
            sel = pre.index_select(-1, self.features)  # [N, E]
            if sel.numel() * pre.shape[-1] <= _COUNT_BUDGET:
                # f is among the k largest iff fewer than k entries exceed it: for a few
                # features and tokens, one comparison is cheaper than a top-k or its bound
                above = (pre.unsqueeze(1) > sel.unsqueeze(-1)).sum(dim=-1)  # [N, E]
                return torch.relu(sel) * (above < k)
            if self.bound_first and len(pre) <= _BOUND_FIRST_ROWS:
                # the maxima of k disjoint chunks are k entries, so their min is <= the
                # k-th largest: features below it in every row are all inactive, and the
                # top-k (the dearer op here) is not needed. One host sync: CPU only.
                lower = pre.view(len(pre), -1, k).amax(dim=1).amin(dim=-1, keepdim=True)
                can_be_active = sel >= lower
                if live is not None:
                    can_be_active &= live
                if not bool(can_be_active.any()):
                    return None
            kth = torch.topk(pre, k, dim=-1).values[:, -1:]  # [N, 1]
            return torch.relu(sel) * (sel >= kth)
        a = torch.relu(pre)
        if cfg.activation is Activation.JUMPRELU:
            a = a * (pre > self.threshold)
        return a


_BOUND_FIRST_ROWS = 16
"""Up to this many tokens (decode steps) ``latents`` first tries to rule every feature out."""

_COUNT_BUDGET = 1 << 18
"""Up to this many (token, feature, latent) comparisons TopK activity is found by counting
the latents above each feature instead of by a top-k."""


# the coefficient of d_f is c0 + c1 * a_f
_C0_C1: dict[InterventionMode, Callable[[float], tuple[float, float]]] = {
    InterventionMode.ADD: lambda v: (v, 0.0),
    InterventionMode.CLAMP: lambda v: (v, -1.0),
    InterventionMode.SCALE: lambda v: (0.0, v - 1.0),
    InterventionMode.ABLATE: lambda v: (0.0, -1.0),
    InterventionMode.VECTOR: lambda v: (v, 0.0),
}


class _Entries:
    """Interventions at one hook point as stacked tensors, built once per plan.

    Entry e adds ``coeff * dirs[e]`` to its row, ``coeff = (c0 + c1 * a_f) * std * mask``.
    The R rows the entries sit on are computed together as [R, S, E] coefficients, zero
    where an entry is not on a row (``c0``, ``c1`` are [R, 1, E] tables), and one matmul
    with ``dirs`` [E, d] turns them into the rows' changes. With ``sae`` None (VECTOR,
    and ADD on SAEs without a per-token scale) nothing depends on h and no encoder runs.
    """

    def __init__(
        self, entries: list[tuple[int, ResolvedIntervention]], sae: Sae | None, n_rows: int
    ) -> None:
        self.items = entries
        self.dirs = torch.stack([_direction(iv) for _, iv in entries])  # [E, d]
        dev = self.dirs.device
        rows = sorted({r for r, _ in entries})
        self.batched_dirs = self.dirs.expand(len(rows), -1, -1)  # [R, E, d], a view
        self.all_rows = rows == list(range(n_rows))
        self.rows = torch.tensor(rows, device=dev)  # [R]
        # built as lists and sent as one tensor each (an item write per entry costs more)
        tables = [[[0.0] * len(entries) for _ in rows] for _ in range(3)]  # c0, c1, on_row
        row_index = {r: i for i, r in enumerate(rows)}
        for e, (r, iv) in enumerate(entries):
            i = row_index[r]
            tables[0][i][e], tables[1][i][e] = _C0_C1[iv.mode](iv.value)
            tables[2][i][e] = 1.0  # entry e sits on row r
        c0, c1, on_row = torch.tensor(tables, device=dev).unsqueeze(2)  # each [R, 1, E]
        self.c0, self.c1, self.on_row = c0, c1, on_row
        self.wanted = on_row.bool() if len(rows) > 1 else None
        """Which entries each row reads (several rows), for ``latents``."""
        self.n_rows = n_rows
        self.reader = (
            None if sae is None else _FeatureReader(sae, [iv.feature for _, iv in entries])
        )
        self.needs_latents = bool((c1 != 0).any())
        # decode steps: c0's part is constant; only a_f @ (c1 * dirs) changes per step
        self.splits_at_decode = sae is not None and sae.cfg.input_norm is not InputNorm.LAYERNORM
        c1_dirs = c1.sum(dim=(0, 1)).unsqueeze(-1) * self.dirs  # [E, d]
        self.c1_dirs, self.batched_c1_dirs = c1_dirs, c1_dirs.expand(len(rows), -1, -1)

    def add_to(self, out: Tensor, h: Tensor, mask: Tensor | None) -> Tensor:
        """out [B, S, d] float plus this group's change, read from the unsteered h [B, S, d];
        mask [E, S] (1 where an entry applies) or None for every position."""
        coeff = self.c0  # [R, 1, E]
        if self.reader is not None:
            x = h if self.all_rows else h.index_select(0, self.rows)  # [R, S, d]
            x_n, std = self.reader.normalize(x)
            if self.needs_latents:
                a = self.reader.latents(x_n)  # [R, S, E], None if all 0
                if a is not None:
                    coeff = torch.addcmul(coeff, self.c1, a)
            if std is not None:
                coeff = coeff * std
        if mask is not None:
            coeff = coeff * mask.T
        if self.all_rows:
            # out + coeff @ dirs in one op: [B, S, d] + [B, S, E] @ [B, E, d]
            if coeff.shape[:2] != out.shape[:2]:
                coeff = coeff.expand(*out.shape[:2], -1)
            return torch.baddbmm(out, coeff, self.batched_dirs)
        delta = coeff @ self.dirs  # [R, S or 1, d]
        return out.index_add(0, self.rows, delta.expand(len(self.rows), *out.shape[1:]))

    def add_latent_part(self, out: Tensor, h: Tensor) -> Tensor:
        """out + the a_f-dependent part of a decode step's change (``splits_at_decode``):
        [R, S, E] latents times ``c1 * dirs``; the rest of the change is ``constant()``."""
        assert self.reader is not None
        x = h if self.all_rows else h.index_select(0, self.rows)  # [R, S, d]
        a = self.reader.latents(self.reader.normalize(x)[0], self.wanted)  # [R, S, E]
        if a is None:
            return out
        if self.wanted is not None:
            a = a * self.on_row  # each entry reads its own row only
        if self.all_rows:
            return torch.baddbmm(out, a, self.batched_c1_dirs)
        return out.index_add(0, self.rows, a @ self.c1_dirs)

    def constant(self) -> Tensor:
        """[B, 1, d]: the change of every row when it does not depend on h (no mask),
        or, for a group that ``splits_at_decode``, the part that does not."""
        delta = self.c0 @ self.dirs  # [R, 1, d]
        zeros = delta.new_zeros(self.n_rows, 1, delta.shape[-1])
        return zeros.index_add(0, self.rows, delta)


def _direction(iv: ResolvedIntervention) -> Tensor:
    """[d] float32 in model space: v for VECTOR; d_f (unit if normalize) for an SAE, divided
    by its dataset scale if it has one (a LayerNorm SAE's per-token std is applied later)."""
    if iv.sae is None:
        assert iv.vector is not None
        return iv.vector.float()
    sae = iv.sae.sae
    d_f = sae.W_dec[iv.feature].float()
    if iv.normalize:
        d_f = d_f / d_f.norm().clamp_min(1e-12)
    if sae.cfg.input_norm is InputNorm.SCALE:
        d_f = d_f / sae.cfg.norm_scale
    return d_f


def _needs_h(iv: ResolvedIntervention) -> bool:
    """Whether the change depends on h: a_f, or the per-token std of a LayerNorm SAE."""
    if iv.sae is None:
        return False
    return iv.mode is not InterventionMode.ADD or iv.sae.sae.cfg.input_norm is InputNorm.LAYERNORM


class _Tracked:
    """Tracked features of one SAE at one point: entry e is slot j of row r."""

    def __init__(self, items: list[tuple[int, int, HookedSae, int]]) -> None:
        self.slots = [(r, j) for r, j, _, _ in items]
        self.reader = _FeatureReader(items[0][2].sae, [f for _, _, _, f in items])
        dev = self.reader.features.device
        rows = sorted({r for r, _, _, _ in items})
        self.rows = torch.tensor(rows, device=dev)
        self.row_of = torch.tensor([rows.index(r) for r, _, _, _ in items], device=dev)
        self.entry_ids = torch.arange(len(items), device=dev)

    def read(self, h: Tensor) -> list[float]:
        """a_f of every entry at its row's last position of h [B, S, d]."""
        x_n, _ = self.reader.normalize(h.index_select(0, self.rows)[:, -1:])  # [R, 1, d]
        a = self.reader.latents(x_n)  # [R, 1, E]
        if a is None:
            return [0.0] * len(self.slots)
        return a[:, 0][self.row_of, self.entry_ids].tolist()


HookFn = Callable[[Tensor], Tensor | None]


class SteeringPlan:
    """Hook functions applying each row's interventions and reading its tracked features.

    Built once per batch composition: the rows' interventions become stacked tensors per
    hook point (``_Entries``), so a forward pass costs a few tensor ops per point and no
    Python per intervention. ``hook_fns(token_pos, prompt_lens)`` serves any forward:
    ``token_pos`` [B, S] gives each token's index in its own sequence (-1 for padding),
    ``prompt_lens`` [B] the prompt lengths. ``decode_hook_fns()`` serves decode steps,
    where every row's one token is a generated one, so positions need no masks and
    changes that do not depend on h are added as one precomputed [B, 1, d] tensor.
    After the forward, ``tracked`` [B][n_tracked] holds the tracked activations at each
    row's last position (read after steering, so a clamp shows as its value).
    """

    def __init__(
        self,
        rows: Sequence[Sequence[ResolvedIntervention]],
        tracked: Sequence[Sequence[tuple[HookedSae, int]]] = (),
    ) -> None:
        self.n_rows = len(rows)
        self.rows = [list(items) for items in rows]
        tracked = list(tracked) or [[] for _ in rows]
        self.n_tracked = [len(t) for t in tracked]
        self.tracked: list[list[float]] = [[0.0] * n for n in self.n_tracked]
        self._all = self._entries(lambda iv: True)
        self._decode_fns: dict[HookPoint, HookFn] | None = None
        by_sae: dict[tuple[HookPoint, str], list[tuple[int, int, HookedSae, int]]] = {}
        for r, feats in enumerate(tracked):
            for j, (hooked, f) in enumerate(feats):
                by_sae.setdefault((hooked.hook_point, hooked.id), []).append((r, j, hooked, f))
        self._tracked: dict[HookPoint, list[_Tracked]] = defaultdict(list)
        for (point, _), items in by_sae.items():
            self._tracked[point].append(_Tracked(items))

    def _entries(
        self, keep: Callable[[ResolvedIntervention], bool]
    ) -> dict[HookPoint, list[_Entries]]:
        """The kept interventions grouped per point: one group per SAE whose change
        depends on h, and one for all the constant ones."""
        groups: dict[HookPoint, dict[str, list[tuple[int, ResolvedIntervention]]]]
        groups = defaultdict(dict)
        saes: dict[str, Sae] = {}
        for r, items in enumerate(self.rows):
            for iv in items:
                if not keep(iv):
                    continue
                key = ""  # the constant changes, one group per point
                if iv.sae is not None and _needs_h(iv):
                    key = iv.sae.id
                    saes[key] = iv.sae.sae
                groups[iv.point].setdefault(key, []).append((r, iv))
        return {
            point: [
                _Entries(entries, saes.get(key), self.n_rows) for key, entries in by_key.items()
            ]
            for point, by_key in groups.items()
        }

    @property
    def points(self) -> set[HookPoint]:
        return set(self._all) | set(self._tracked)

    def hook_fns(self, token_pos: Tensor, prompt_lens: Tensor) -> dict[HookPoint, HookFn]:
        """Hooks for any forward pass; see the class docstring."""
        fns = {}
        for point in self.points:
            groups = self._all.get(point, [])
            masks = [_entry_masks(g, token_pos, prompt_lens) for g in groups]
            fns[point] = self._hook(point, list(zip(groups, masks, strict=True)), None)
        return fns

    def decode_hook_fns(self) -> dict[HookPoint, HookFn]:
        """Hooks for a decode step: one generated token per row (position >= prompt length).
        Built on the first call; the same functions serve every later step."""
        if self._decode_fns is None:
            generated = (PositionKind.ALL, PositionKind.GENERATED)
            decode = self._entries(lambda iv: iv.positions in generated)
            self._decode_fns = {}
            for point in self.points:
                groups = decode.get(point, [])
                # what does not depend on h is added as one [B, 1, d] tensor
                parts = [g.constant() for g in groups if g.reader is None or g.splits_at_decode]
                constant = torch.stack(parts).sum(0) if parts else None
                split = [g for g in groups if g.splits_at_decode]
                whole: list[tuple[_Entries, Tensor | None]] = [
                    (g, None) for g in groups if g.reader is not None and not g.splits_at_decode
                ]
                self._decode_fns[point] = self._hook(point, whole, constant, split)
        return self._decode_fns

    def _hook(
        self,
        point: HookPoint,
        groups: list[tuple[_Entries, Tensor | None]],
        constant: Tensor | None,
        split: Sequence[_Entries] = (),
    ) -> HookFn:
        """The hook at one point: ``constant`` [B, 1, d], each group's ``add_to`` under its
        mask, each ``split`` group's ``add_latent_part``; then the tracked features."""
        tracked = self._tracked.get(point, [])

        def fn(h: Tensor) -> Tensor | None:
            # every change is read from the unsteered h, then all are added at once
            out = None
            if groups or split or constant is not None:
                out = h if h.dtype == torch.float32 else h.float()  # never written in place
                if constant is not None:
                    out = out + constant
                for g, mask in groups:
                    out = g.add_to(out, h, mask)
                for g in split:
                    out = g.add_latent_part(out, h)
                if out.dtype != h.dtype:
                    out = out.to(h.dtype)
            for t in tracked:
                for (r, j), value in zip(t.slots, t.read(h if out is None else out), strict=True):
                    self.tracked[r][j] = value
            return out

        return fn


def _entry_masks(g: _Entries, token_pos: Tensor, prompt_lens: Tensor) -> Tensor:
    """[E, S] float: 1 where each entry applies to its row's tokens."""
    return torch.stack([_position_mask(iv, token_pos[r], prompt_lens[r]) for r, iv in g.items])


def _position_mask(iv: ResolvedIntervention, pos: Tensor, prompt_len: Tensor) -> Tensor:
    """[S] float: 1 where the intervention applies to this row's tokens."""
    real = pos >= 0
    kind = iv.positions
    if kind is PositionKind.ALL:
        m = real
    elif kind is PositionKind.PROMPT:
        m = real & (pos < prompt_len)
    elif kind is PositionKind.GENERATED:
        m = pos >= prompt_len
    else:
        m = torch.isin(pos, torch.tensor(iv.indices, device=pos.device))
    return m.float()
