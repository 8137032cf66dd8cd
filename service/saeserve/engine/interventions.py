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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.engine.types import Intervention, InterventionMode, PositionKind, TrackedFeature
from saeserve.errors import InvalidArgument
from saeserve.model.hookpoints import HookPoint
from saeserve.sae.base import InputNorm, Sae


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
    return [
        _resolve_one(served, iv, prompt_len, f"{field_name}[{i}]")
        for i, iv in enumerate(interventions)
    ]


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
        self.features = torch.tensor(features, device=sae.W_enc.device)  # [E]

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
    nothing depends on h and no encoder runs.
    """

    def __init__(self, entries: list[tuple[int, ResolvedIntervention]], sae: Sae | None) -> None:
        self.items = entries
        self.dirs = torch.stack([_direction(iv) for _, iv in entries])  # [E, d]
        rows = sorted({r for r, _ in entries})
        self.rows = torch.tensor(rows, device=self.dirs.device)  # [R]
        c0 = [[0.0] * len(entries) for _ in rows]
        c1 = [[0.0] * len(entries) for _ in rows]
        for e, (r, iv) in enumerate(entries):
            i = rows.index(r)
            c0[i][e], c1[i][e] = _C0_C1[iv.mode](iv.value)
        self.c0 = torch.tensor(c0, device=self.dirs.device).unsqueeze(1)  # [R, 1, E]
        self.c1 = torch.tensor(c1, device=self.dirs.device).unsqueeze(1)  # [R, 1, E]
        on_row = [[float(r == row) for r, _ in entries] for row in rows]
        self.on_row = torch.tensor(on_row, device=self.dirs.device)  # [R, E]
        features = [iv.feature for _, iv in entries]
        self.reader: _FeatureReader | None = None
        if sae is not None and entries[0][1].mode is InterventionMode.CLAMP_THRESHOLD:
            self.reader = _ThresholdReader(sae, features, [iv.threshold for _, iv in entries])
        elif sae is not None:
            self.reader = _FeatureReader(sae, features)
        self.needs_latents = bool((self.c1 != 0).any())

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
        a = self.reader.latents(h.index_select(0, self.rows)[:, -1])  # [R, E]
        return a[self.row_of, self.entry_ids].tolist()


HookFn = Callable[[Tensor], Tensor | None]


class SteeringPlan:
    """Hook functions applying each row's interventions and reading its tracked features.

    Built once per batch composition (see the module docstring). ``hook_fns(token_pos,
    prompt_lens)`` serves any forward: ``token_pos`` [B, S] gives each token's index in its
    own sequence (-1 for padding), ``prompt_lens`` [B] the prompt lengths.
    ``decode_hook_fns()`` serves every decode step with the same functions: each row's one
    token is a generated one, so the PROMPT and INDICES interventions drop out and the rest
    apply without a mask. After the forward, ``tracked`` [B][n_tracked] holds the tracked
    activations at each row's last position (read after steering, so a clamp shows as its
    value).
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
        depends on h (and one more per SAE for CLAMP_THRESHOLD, which reads a'_f), and one
        for all the constant ones."""
        groups: dict[HookPoint, dict[tuple[str, bool], list[tuple[int, ResolvedIntervention]]]]
        groups = defaultdict(dict)
        saes: dict[tuple[str, bool], Sae] = {}
        for r, items in enumerate(self.rows):
            for iv in items:
                if not keep(iv):
                    continue
                key = ("", False)  # the constant changes, one group per point
                if iv.sae is not None and _needs_h(iv):
                    key = (iv.sae.id, iv.mode is InterventionMode.CLAMP_THRESHOLD)
                    saes[key] = iv.sae.sae
                groups[iv.point].setdefault(key, []).append((r, iv))
        return {
            point: [_Entries(entries, saes.get(key)) for key, entries in by_key.items()]
            for point, by_key in groups.items()
        }

    @property
    def points(self) -> set[HookPoint]:
        return set(self._all) | set(self._tracked)

    def hook_fns(self, token_pos: Tensor, prompt_lens: Tensor) -> dict[HookPoint, HookFn]:
        """Hooks for any forward pass; see the class docstring."""
        fns = {}
        for point in self.points:
            groups = [
                (g, _entry_masks(g, token_pos, prompt_lens)) for g in self._all.get(point, [])
            ]
            # a group that applies nowhere in this forward (GENERATED entries at a prefill)
            # changes nothing: its encode would be wasted
            fns[point] = self._hook(point, [(g, m) for g, m in groups if bool(m.any())])
        return fns

    def decode_hook_fns(self) -> dict[HookPoint, HookFn]:
        """Hooks for a decode step: one generated token per row (position >= prompt length).
        Built on the first call; the same functions serve every later step."""
        if self._decode_fns is None:
            generated = (PositionKind.ALL, PositionKind.GENERATED)
            decode = self._entries(lambda iv: iv.positions in generated)
            self._decode_fns = {
                point: self._hook(point, [(g, None) for g in decode.get(point, [])])
                for point in self.points
            }
        return self._decode_fns

    def _hook(self, point: HookPoint, groups: list[tuple[_Entries, Tensor | None]]) -> HookFn:
        """The hook at one point: each group's ``add_to`` under its mask, then the tracked
        features."""
        tracked = self._tracked.get(point, [])

        def fn(h: Tensor) -> Tensor | None:
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
