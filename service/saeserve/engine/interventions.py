"""Steering: the intervention math of DESIGN.md as hook functions over a batch.

With h the activation at an SAE's hook point (model space), a = encode(h) its latents
(``Sae.encode_sparse``: exactly the SAE's own, so TopK membership is decided there) and
d_f = W_dec[f], every intervention adds ``coeff * direction`` to h:

    ADD     h += value * d_f                  coeff = value           (normalize: d_f / |d_f|)
    CLAMP   h += (value - a_f) * d_f          coeff = value - a_f
    SCALE   h += (value - 1) * a_f * d_f      coeff = (value - 1) * a_f
    ABLATE  h -= a_f * d_f                    coeff = -a_f
    VECTOR  h += value * v                    coeff = value           (model space; normalize: v / |v|)
    CLAMP_THRESHOLD                           coeff = value - a'_f    (a'_f: see below)

CLAMP_THRESHOLD is CLAMP with an approximate a_f, asked for explicitly: a'_f = max(pre_f,
0) where the feature's own pre-activation exceeds the intervention's threshold, else 0,
read from its encoder column alone (``_ThresholdReader``); exact CLAMP on a TopK SAE
must rank all d_sae pre-activations wherever pre_f > 0.

so ``coeff = c0 + c1 * a_f`` with (c0, c1) a function of the mode and value alone. The
reconstruction error is never touched: only the component along d_f moves. An SAE that
normalises its input is steered in its own space and the change mapped back: d_f is
divided by its dataset scale, and for a per-token LayerNorm the coefficient is multiplied
by the token's std. Every a_f is read from the unsteered h, so several interventions on
one SAE do not see each other.

Every row of a batch carries its own list. ``SteeringPlan`` stacks them once per batch
composition into one group per (hook point, SAE): [R, 1, E] tables of c0 and c1 for the
R rows and E entries, and the [E, d] directions; a forward then costs, per group, one
encode of the rows (none for ADD and VECTOR) and one [R, S, E] @ [E, d] product, and no
row can change another.

Conditions. An intervention may carry a ``FeatureCondition`` (SAE S, feature F, threshold
t): it then applies only at the tokens where a_F > t (a_F < t with ``below``), decided per
row and per position in every forward. a_F is S's exact activation (``encode_sparse``, so
TopK membership included) of the activation *arriving* at S's hook point in that forward:
after the interventions at earlier hook points (and, through attention, at earlier
positions), before those at S's own point, which read their a_f from the same h, so a
condition never sees its own effect. S may be hooked at the steered point or at one the
forward reaches before it (``runs_no_later``); a later point is refused, as it would need
the future of the same position. A request's stop conditions are read the same way at each
step's input position (the one ``tracked`` reports), for its steered and baseline rows.
Each (hook point, SAE) of conditions costs one encode of its rows per forward.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.engine.types import (
    FeatureCondition,
    Intervention,
    InterventionMode,
    PositionKind,
    TrackedFeature,
)
from saeserve.errors import InvalidArgument
from saeserve.model.hookpoints import HookPoint, runs_no_later
from saeserve.sae.base import InputNorm, Sae


@dataclass(frozen=True)
class ResolvedCondition:
    """A validated ``FeatureCondition`` bound to its SAE; ``threshold`` is rounded to
    float32, the precision activations are compared in on host and device alike."""

    sae: HookedSae
    feature: int
    threshold: float
    below: bool

    def holds(self, a: float) -> bool:
        return a < self.threshold if self.below else a > self.threshold


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
    condition: ResolvedCondition | None = None
    threshold: float = 0.0  # CLAMP_THRESHOLD


def resolve_interventions(
    served: ServedModel,
    interventions: Sequence[Intervention],
    prompt_len: int,
    *,
    field_name: str = "interventions",
) -> list[ResolvedIntervention]:
    """Bind each intervention (already ``validate``d: mode, value, positions) to the
    model and its SAEs, checking what needs them; errors name the field."""
    out = []
    for i, iv in enumerate(interventions):
        where = f"{field_name}[{i}]"
        resolved = _resolve_one(served, iv, prompt_len, where)
        if (
            iv.mode is InterventionMode.CLAMP_THRESHOLD
            and resolved.sae is not None
            and not resolved.sae.sae.holds_encoder
        ):
            raise InvalidArgument(
                f"{where}.mode: CLAMP_THRESHOLD reads the feature's own encoder column, which "
                f"SAE {resolved.sae.id!r} keeps on its shards; use CLAMP (exact, and merged "
                "from the shards' top k)"
            )
        if iv.condition is not None:
            cond = resolve_condition(served, iv.condition, f"{where}.condition")
            point = cond.sae.hook_point
            if not runs_no_later(point, resolved.point):
                raise InvalidArgument(
                    f"{where}.condition.sae: {cond.sae.id!r} is hooked at {point}, which the "
                    f"forward reaches after the steered point {resolved.point}; a condition "
                    "must be read at or before the point it steers"
                )
            resolved = replace(resolved, condition=cond)
        out.append(resolved)
    return out


def resolve_condition(served: ServedModel, cond: FeatureCondition, where: str) -> ResolvedCondition:
    """Bind a (``validate``d) condition to its SAE, checking the id and feature range."""
    hooked = served.sae(cond.sae_id, field_name=f"{where}.sae")
    _check_feature(hooked, cond.feature, f"{where}.feature")
    threshold = torch.tensor(cond.threshold, dtype=torch.float32).item()
    return ResolvedCondition(hooked, cond.feature, threshold, cond.below)


def resolve_stop_conditions(
    served: ServedModel, conds: Sequence[FeatureCondition], *, field_name: str = "stop_conditions"
) -> list[ResolvedCondition]:
    return [resolve_condition(served, c, f"{field_name}[{i}]") for i, c in enumerate(conds)]


def _resolve_one(
    served: ServedModel, iv: Intervention, prompt_len: int, where: str
) -> ResolvedIntervention:
    mode = InterventionMode(iv.mode)
    positions = PositionKind(iv.positions)
    indices = tuple(iv.indices)
    for j, p in enumerate(indices):
        if not 0 <= p < prompt_len:
            raise InvalidArgument(
                f"{where}.indices[{j}]: {p} must be in [0, {prompt_len}) (prompt tokens)"
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
    _check_feature(hooked, iv.feature, f"{where}.feature")
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
        threshold=iv.threshold,
    )


def resolve_tracked(
    served: ServedModel, track: Sequence[TrackedFeature], *, field_name: str = "track"
) -> list[tuple[HookedSae, int]]:
    """Each tracked feature's SAE, checking the id and the feature's range."""
    out = []
    for i, t in enumerate(track):
        hooked = served.sae(t.sae_id, field_name=f"{field_name}[{i}].sae")
        _check_feature(hooked, t.feature, f"{field_name}[{i}].feature")
        out.append((hooked, t.feature))
    return out


def _check_feature(hooked: HookedSae, feature: int, where: str) -> None:
    d_sae = hooked.sae.d_sae
    if not 0 <= feature < d_sae:
        raise InvalidArgument(f"{where}: {feature} must be in [0, {d_sae}) (d_sae)")


class _FeatureReader:
    """a_f of a few features of one SAE at every token of model-space h."""

    def __init__(self, sae: Sae, features: list[int]) -> None:
        self.sae = sae
        self.features = torch.tensor(features, device=sae.b_dec.device)  # [E]

    def latents(self, h: Tensor) -> Tensor:
        """[..., E] float32: each feature's a_f at every token of h [..., d]."""
        a = self.sae.encode_sparse(h, k=0, features=self.features).features
        assert a is not None
        return a.float()

    def std(self, h: Tensor) -> Tensor | None:
        """[..., 1] the per-token std of a LayerNorm SAE's input (None for other SAEs: a
        dataset scale is constant and folded into the directions)."""
        if self.sae.cfg.input_norm is not InputNorm.LAYERNORM:
            return None
        return self.sae.normalize(h)[1].scale.float()


class _ConditionReads:
    """Conditions on features of one SAE, read at its hook point for the rows carrying them.

    Item c is (row, j, condition): the row's j-th condition (of its interventions, or of
    its stop conditions); ``read(h)`` sets ``values`` and ``holds`` [C, S] at every
    position of h [B, S, d], the activation arriving at the point.
    """

    def __init__(self, items: list[tuple[int, int, ResolvedCondition]]) -> None:
        self.items = items
        self.reader = _FeatureReader(items[0][2].sae.sae, [c.feature for _, _, c in items])
        dev = self.reader.features.device
        rows = sorted({r for r, _, _ in items})
        self.rows = torch.tensor(rows, device=dev)  # [R]
        self.row_of = torch.tensor([rows.index(r) for r, _, _ in items], device=dev)  # [C]
        self.column = torch.arange(len(items), device=dev)  # [C]
        self.threshold = torch.tensor(
            [[c.threshold] for _, _, c in items], dtype=torch.float32, device=dev
        )  # [C, 1]
        self.below = torch.tensor([[c.below] for _, _, c in items], device=dev)  # [C, 1]
        self.values: Tensor | None = None
        self.holds: Tensor | None = None

    def read(self, h: Tensor) -> None:
        a = self.reader.latents(h.index_select(0, self.rows))  # [R, S, C]
        values = a[self.row_of, :, self.column]  # [C, S]: item c's feature on its row
        self.values = values
        self.holds = torch.where(self.below, values < self.threshold, values > self.threshold)


def _condition_reads(
    conditions: list[tuple[int, int, ResolvedCondition]],
) -> tuple[dict[HookPoint, list[_ConditionReads]], list[tuple[_ConditionReads, int]]]:
    """The (row, j, condition)s grouped per (point, SAE): the groups by point, and where
    each condition landed (its group and its index there), in the order given."""
    by_sae: dict[tuple[HookPoint, str], list[tuple[int, int, ResolvedCondition]]] = {}
    where: list[tuple[tuple[HookPoint, str], int]] = []
    for r, j, c in conditions:
        key = (c.sae.hook_point, c.sae.id)
        items = by_sae.setdefault(key, [])
        where.append((key, len(items)))
        items.append((r, j, c))
    reads = {key: _ConditionReads(items) for key, items in by_sae.items()}
    by_point: dict[HookPoint, list[_ConditionReads]] = defaultdict(list)
    for (point, _), group in reads.items():
        by_point[point].append(group)
    return dict(by_point), [(reads[key], i) for key, i in where]


class _ThresholdReader(_FeatureReader):
    """CLAMP_THRESHOLD's a'_f: max(pre_f, 0) where pre_f > the entry's threshold, else 0,
    from the features' encoder columns alone (no TopK membership test)."""

    def __init__(self, sae: Sae, features: list[int], thresholds: list[float]) -> None:
        super().__init__(sae, features)
        self.thresholds = torch.tensor(thresholds, device=sae.W_enc.device)  # [E]
        self.columns = sae.feature_columns(self.features)  # once per plan, not per step

    def latents(self, h: Tensor) -> Tensor:
        flat = h.reshape(-1, h.shape[-1])
        pre = self.sae.feature_pre_activations(flat, self.features, self.columns).float()
        a = torch.where(pre > self.thresholds, pre.clamp_min(0), 0.0)
        return a.reshape(*h.shape[:-1], -1)


# the coefficient of d_f is c0 + c1 * a_f
_C0_C1: dict[InterventionMode, Callable[[float], tuple[float, float]]] = {
    InterventionMode.ADD: lambda v: (v, 0.0),
    InterventionMode.CLAMP: lambda v: (v, -1.0),
    InterventionMode.SCALE: lambda v: (0.0, v - 1.0),
    InterventionMode.ABLATE: lambda v: (0.0, -1.0),
    InterventionMode.VECTOR: lambda v: (v, 0.0),
    InterventionMode.CLAMP_THRESHOLD: lambda v: (v, -1.0),
}


class _Entries:
    """Interventions at one hook point as stacked tensors, built once per plan.

    Entry e sits on row r and adds ``coeff * dirs[e]`` there, ``coeff = (c0 + c1 * a_f) *
    std * mask``; ``c0``, ``c1`` are [R, 1, E] tables over the R rows the group touches,
    zero where an entry is not on a row, so one [R, S, E] @ [E, d] product gives every
    row's change. With ``sae`` None (VECTOR, and ADD on SAEs without a per-token scale)
    nothing depends on h and no encoder runs. ``conditions[e]`` is where entry e's
    condition is read (None: unconditional); those reads have run when ``add_to`` does.
    """

    def __init__(
        self,
        entries: list[tuple[int, ResolvedIntervention]],
        sae: Sae | None,
        conditions: list[tuple[_ConditionReads, int] | None],
    ) -> None:
        self.items = entries
        self.dirs = torch.stack([_direction(iv) for _, iv in entries])  # [E, d]
        rows = sorted({r for r, _ in entries})
        self.rows = torch.tensor(rows, device=self.dirs.device)  # [R]
        c0 = [[0.0] * len(entries) for _ in rows]
        c1 = [[0.0] * len(entries) for _ in rows]
        for e, (r, iv) in enumerate(entries):
            i = rows.index(r)
            c0[i][e], c1[i][e] = _C0_C1[iv.mode](iv.value)
        # [R, 1, E] float32 each (an int value must not make an integer table)
        dev = self.dirs.device
        self.c0 = torch.tensor(c0, dtype=torch.float32, device=dev).unsqueeze(1)
        self.c1 = torch.tensor(c1, dtype=torch.float32, device=dev).unsqueeze(1)
        on_row = [[float(r == row) for r, _ in entries] for row in rows]
        self.on_row = torch.tensor(on_row, device=dev)  # [R, E]
        features = [iv.feature for _, iv in entries]
        self.reader: _FeatureReader | None = None
        if sae is not None and entries[0][1].mode is InterventionMode.CLAMP_THRESHOLD:
            self.reader = _ThresholdReader(sae, features, [iv.threshold for _, iv in entries])
        elif sae is not None:
            self.reader = _FeatureReader(sae, features)
        self.needs_latents = bool((self.c1 != 0).any())
        # entry e's condition is row cond_index[e] of the reads' holds stacked in this
        # order, then a row of ones for the unconditional entries
        self.cond_reads = list({id(c[0]): c[0] for c in conditions if c is not None}.values())
        offsets, n = {}, 0
        for g in self.cond_reads:
            offsets[id(g)], n = n, n + len(g.items)
        self.cond_index = torch.tensor(
            [n if c is None else offsets[id(c[0])] + c[1] for c in conditions],
            device=self.dirs.device,
        )  # [E]

    def condition_mask(self) -> Tensor | None:
        """[E, S] float: 1 where each entry's condition held in this forward (None when no
        entry has one)."""
        if not self.cond_reads:
            return None
        holds = []
        for g in self.cond_reads:
            assert g.holds is not None  # read at its point, earlier in this forward
            holds.append(g.holds)
        table = torch.cat([*holds, holds[0].new_ones(1, holds[0].shape[1])])  # [C + 1, S]
        return table.index_select(0, self.cond_index).float()

    def add_to(self, out: Tensor, h: Tensor, mask: Tensor | None) -> Tensor:
        """out [B, S, d] float plus this group's change, read from the unsteered h [B, S, d];
        mask [E, S] (1 where an entry applies) or None for every position."""
        coeff = self.c0  # [R, 1, E]
        if self.reader is not None:
            x = h.index_select(0, self.rows)  # [R, S, d]
            if self.needs_latents:
                coeff = torch.addcmul(coeff, self.c1, self._latents(x, mask))  # [R, S, E]
            std = self.reader.std(x)  # [R, S, 1] or None
            if std is not None:
                coeff = coeff * std
        conditions = self.condition_mask()
        if conditions is not None:
            mask = conditions if mask is None else mask * conditions
        if mask is not None:
            coeff = coeff * mask.T
        delta = coeff @ self.dirs  # [R, S or 1, d]
        return out.index_add(0, self.rows, delta.expand(len(self.rows), *out.shape[1:]))

    def _latents(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """[R, S, E] float32 a_f of x [R, S, d], read only at the tokens where one of the
        row's entries applies (mask [E, S], or None for all), 0 elsewhere: a prefill's
        padding and the positions a PROMPT or INDICES entry leaves out are never encoded
        (at 1,048,576 latents each is a [d, d_sae] matmul of its own block)."""
        assert self.reader is not None
        if mask is None:
            return self.reader.latents(x)
        need = (self.on_row @ mask) > 0  # [R, S]
        if bool(need.all()):
            return self.reader.latents(x)
        a = x.new_zeros(*need.shape, len(self.items), dtype=torch.float32)
        a[need] = self.reader.latents(x[need])
        return a


def _direction(iv: ResolvedIntervention) -> Tensor:
    """[d] float32 in model space: v for VECTOR; d_f (unit if normalize) for an SAE, divided
    by its dataset scale if it has one (a LayerNorm SAE's per-token std is applied later)."""
    if iv.sae is None:
        assert iv.vector is not None
        return iv.vector.float()
    sae = iv.sae.sae
    d_f = sae.decoder_rows(torch.tensor([iv.feature]))[0].float()
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
        a = self.reader.latents(h.index_select(0, self.rows)[:, -1])  # [R, E]
        return a[self.row_of, self.entry_ids].tolist()


HookFn = Callable[[Tensor], Tensor | None]


class _Steering(NamedTuple):
    """What one kind of forward (prefill, decode) does at each point: the conditions read
    there first, then the groups' changes."""

    groups: dict[HookPoint, list[_Entries]]
    conditions: dict[HookPoint, list[_ConditionReads]]


class SteeringPlan:
    """Hook functions applying each row's interventions and reading its tracked features.

    Built once per batch composition (see the module docstring). ``hook_fns(token_pos,
    prompt_lens)`` serves any forward: ``token_pos`` [B, S] gives each token's index in its
    own sequence (-1 for padding), ``prompt_lens`` [B] the prompt lengths.
    ``decode_hook_fns()`` serves every decode step with the same functions: each row's one
    token is a generated one, so the PROMPT and INDICES interventions drop out and the rest
    apply without a mask. After the forward, ``tracked`` [B][n_tracked] holds the tracked
    activations at each row's last position (read after steering, so a clamp shows as its
    value), and ``stop_values`` [B][n_stop] each row's stop conditions' activations there
    (read before the steering at their point, as every condition is).
    """

    def __init__(
        self,
        rows: Sequence[Sequence[ResolvedIntervention]],
        tracked: Sequence[Sequence[tuple[HookedSae, int]]] = (),
        stops: Sequence[Sequence[ResolvedCondition]] = (),
    ) -> None:
        self.n_rows = len(rows)
        self.rows = [list(items) for items in rows]
        tracked = list(tracked) or [[] for _ in rows]
        self.n_tracked = [len(t) for t in tracked]
        self.tracked: list[list[float]] = [[0.0] * n for n in self.n_tracked]
        stops = list(stops) or [[] for _ in rows]
        self.stop_values: list[list[float]] = [[0.0] * len(s) for s in stops]
        self._stops, _ = _condition_reads(
            [(r, j, c) for r, cs in enumerate(stops) for j, c in enumerate(cs)]
        )
        self._all = self._entries(lambda iv: True)
        self._decode_fns: dict[HookPoint, HookFn] | None = None
        by_sae: dict[tuple[HookPoint, str], list[tuple[int, int, HookedSae, int]]] = {}
        for r, feats in enumerate(tracked):
            for j, (hooked, f) in enumerate(feats):
                by_sae.setdefault((hooked.hook_point, hooked.id), []).append((r, j, hooked, f))
        self._tracked: dict[HookPoint, list[_Tracked]] = defaultdict(list)
        for (point, _), items in by_sae.items():
            self._tracked[point].append(_Tracked(items))

    def _entries(self, keep: Callable[[ResolvedIntervention], bool]) -> _Steering:
        """The kept interventions grouped per point: one group per SAE whose change
        depends on h (and one more per SAE for CLAMP_THRESHOLD, which reads a'_f), and one
        for all the constant ones; and their conditions' reads."""
        kept = [
            (r, j, iv)
            for r, items in enumerate(self.rows)
            for j, iv in enumerate(items)
            if keep(iv)
        ]
        conditions, where = _condition_reads(
            [(r, j, iv.condition) for r, j, iv in kept if iv.condition is not None]
        )
        landed = iter(where)
        groups: dict[HookPoint, dict[tuple[str, bool], list[tuple[int, ResolvedIntervention]]]]
        groups = defaultdict(dict)
        conds: dict[HookPoint, dict[tuple[str, bool], list[tuple[_ConditionReads, int] | None]]]
        conds = defaultdict(dict)
        saes: dict[tuple[str, bool], Sae] = {}
        for r, _, iv in kept:
            key = ("", False)  # the constant changes, one group per point
            if iv.sae is not None and _needs_h(iv):
                key = (iv.sae.id, iv.mode is InterventionMode.CLAMP_THRESHOLD)
                saes[key] = iv.sae.sae
            groups[iv.point].setdefault(key, []).append((r, iv))
            cond = next(landed) if iv.condition is not None else None
            conds[iv.point].setdefault(key, []).append(cond)
        return _Steering(
            {
                point: [
                    _Entries(entries, saes.get(key), conds[point][key])
                    for key, entries in by_key.items()
                ]
                for point, by_key in groups.items()
            },
            conditions,
        )

    @property
    def points(self) -> set[HookPoint]:
        return (
            set(self._all.groups)
            | set(self._all.conditions)
            | set(self._tracked)
            | set(self._stops)
        )

    def hook_fns(self, token_pos: Tensor, prompt_lens: Tensor) -> dict[HookPoint, HookFn]:
        """Hooks for any forward pass; see the class docstring."""
        fns = {}
        for point in self.points:
            masked = [
                (g, _entry_masks(g, token_pos, prompt_lens))
                for g in self._all.groups.get(point, [])
            ]
            reads = self._all.conditions.get(point, [])
            # a group that applies nowhere in this forward (GENERATED entries at a prefill)
            # changes nothing: its encode would be wasted
            fns[point] = self._hook(point, [(g, m) for g, m in masked if bool(m.any())], reads)
        return fns

    def decode_hook_fns(self) -> dict[HookPoint, HookFn]:
        """Hooks for a decode step: one generated token per row (position >= prompt length).
        Built on the first call; the same functions serve every later step."""
        if self._decode_fns is None:
            generated = (PositionKind.ALL, PositionKind.GENERATED)
            decode = self._entries(lambda iv: iv.positions in generated)
            self._decode_fns = {
                point: self._hook(
                    point,
                    [(g, None) for g in decode.groups.get(point, [])],
                    decode.conditions.get(point, []),
                )
                for point in self.points
            }
        return self._decode_fns

    def _hook(
        self,
        point: HookPoint,
        groups: list[tuple[_Entries, Tensor | None]],
        conditions: list[_ConditionReads],
    ) -> HookFn:
        """The hook at one point: the conditions and stop conditions read there, each
        group's ``add_to`` under its mask, then the tracked features."""
        tracked = self._tracked.get(point, [])
        stops = self._stops.get(point, [])

        def fn(h: Tensor) -> Tensor | None:
            for c in conditions:
                c.read(h)
            for s in stops:
                s.read(h[:, -1:])
                assert s.values is not None
                for (r, j, _), value in zip(s.items, s.values[:, 0].tolist(), strict=True):
                    self.stop_values[r][j] = value
            # every change is read from the unsteered h, then all are added at once
            out = None
            if groups:
                out = h.float()  # a copy when h is not float32; never written in place
                for g, mask in groups:
                    out = g.add_to(out, h, mask)
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
