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
row can change another.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.engine.types import Intervention, InterventionMode, PositionKind, TrackedFeature
from saeserve.errors import InvalidArgument
from saeserve.model.hookpoints import HookPoint
from saeserve.sae.base import Activation, Sae

_MODE_CODE = {
    InterventionMode.ADD: 0,
    InterventionMode.CLAMP: 1,
    InterventionMode.SCALE: 2,
    InterventionMode.ABLATE: 3,
}


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


def feature_activations(
    sae: Sae, x: Tensor, row_of: Tensor, features: Tensor
) -> tuple[Tensor, Tensor]:
    """a_f per entry: x [R, S, d_in], row_of [E] (row of x), features [E] -> a_f [E, S].

    Also returns scale [E, S, 1], which maps an SAE-space change back to model space.
    """
    x_n, ctx = sae.normalize(x)
    pre = sae.pre_activations(x_n)  # [R, S, d_sae]
    seq = torch.arange(pre.shape[1], device=pre.device)
    pre_f = pre[row_of.unsqueeze(-1), seq.unsqueeze(0), features.unsqueeze(-1)]  # [E, S]
    act = sae.cfg.activation
    if act is Activation.TOPK:
        kth = torch.topk(pre, sae.cfg.k or 0, dim=-1).values[..., -1]  # [R, S]
        a_f = torch.relu(pre_f) * (pre_f >= kth[row_of])
    elif act is Activation.JUMPRELU:
        a_f = torch.relu(pre_f) * (pre_f > sae.threshold[features].unsqueeze(-1))
    else:
        a_f = torch.relu(pre_f)
    scale = (
        ctx.scale[row_of] if ctx.scale.dim() > 0 else ctx.scale.expand(len(row_of), pre.shape[1], 1)
    )
    return a_f.float(), scale.float()


@dataclass
class _SaeEntries:
    rows: list[int] = field(default_factory=list)
    items: list[ResolvedIntervention] = field(default_factory=list)


HookFn = Callable[[Tensor], Tensor | None]


class SteeringPlan:
    """Hook functions applying each row's interventions and reading its tracked features.

    ``token_pos`` [B, S] gives, per forward pass, each token's index in its own sequence
    (-1 for padding); ``prompt_lens`` [B] the prompt lengths. After the forward,
    ``tracked`` [B][n_tracked] holds the tracked activations at each row's last position
    (read after steering, so a clamp shows as its value).
    """

    def __init__(
        self,
        rows: Sequence[Sequence[ResolvedIntervention]],
        tracked: Sequence[Sequence[tuple[HookedSae, int]]] = (),
    ) -> None:
        self.n_rows = len(rows)
        self.sae_entries: dict[HookPoint, dict[str, _SaeEntries]] = defaultdict(dict)
        self.vector_entries: dict[HookPoint, list[tuple[int, ResolvedIntervention]]] = defaultdict(
            list
        )
        for r, items in enumerate(rows):
            for iv in items:
                if iv.sae is None:
                    self.vector_entries[iv.point].append((r, iv))
                else:
                    entry = self.sae_entries[iv.point].setdefault(iv.sae.id, _SaeEntries())
                    entry.rows.append(r)
                    entry.items.append(iv)
        self.tracked_spec: dict[HookPoint, list[tuple[int, int, HookedSae, int]]] = defaultdict(
            list
        )
        tracked = list(tracked) or [[] for _ in rows]
        self.n_tracked = [len(t) for t in tracked]
        for r, feats in enumerate(tracked):
            for j, (hooked, f) in enumerate(feats):
                self.tracked_spec[hooked.hook_point].append((r, j, hooked, f))
        self.tracked: list[list[float]] = [[0.0] * n for n in self.n_tracked]

    @property
    def points(self) -> set[HookPoint]:
        return set(self.sae_entries) | set(self.vector_entries) | set(self.tracked_spec)

    def hook_fns(self, token_pos: Tensor, prompt_lens: Tensor) -> dict[HookPoint, HookFn]:
        return {p: self._hook_for(p, token_pos, prompt_lens) for p in self.points}

    def _hook_for(self, point: HookPoint, token_pos: Tensor, prompt_lens: Tensor) -> HookFn:
        def fn(h: Tensor) -> Tensor | None:
            out = self._steer(point, h, token_pos, prompt_lens)
            self._read_tracked(point, out if out is not None else h)
            return out

        return fn

    def _steer(
        self, point: HookPoint, h: Tensor, token_pos: Tensor, prompt_lens: Tensor
    ) -> Tensor | None:
        sae_groups = self.sae_entries.get(point, {})
        vectors = self.vector_entries.get(point, [])
        if not sae_groups and not vectors:
            return None
        delta = torch.zeros(h.shape, dtype=torch.float32, device=h.device)  # [B, S, d]
        for entries in sae_groups.values():
            delta += self._sae_delta(entries, h, token_pos, prompt_lens)
        for r, iv in vectors:
            assert iv.vector is not None
            mask = _position_mask(iv, token_pos[r], prompt_lens[r])  # [S]
            delta[r] += (iv.value * mask).unsqueeze(-1) * iv.vector
        return (h.float() + delta).to(h.dtype)

    def _sae_delta(
        self, entries: _SaeEntries, h: Tensor, token_pos: Tensor, prompt_lens: Tensor
    ) -> Tensor:
        hooked = entries.items[0].sae
        assert hooked is not None
        sae = hooked.sae
        dev = h.device
        rows = torch.tensor(entries.rows, device=dev)
        feats = torch.tensor([iv.feature for iv in entries.items], device=dev)
        values = torch.tensor([iv.value for iv in entries.items], device=dev, dtype=torch.float32)
        modes = torch.tensor([_MODE_CODE[iv.mode] for iv in entries.items], device=dev)
        uniq, inverse = torch.unique(rows, return_inverse=True)
        # a_f per entry, from its row's unsteered activations; each row is encoded once
        a_f, scale = feature_activations(sae, h[uniq], inverse, feats)  # [E, S], [E, S, 1]
        v = values.unsqueeze(-1)
        coeff = torch.where(
            modes.unsqueeze(-1) == 0,
            v.expand_as(a_f),
            torch.where(
                modes.unsqueeze(-1) == 1,
                v - a_f,
                torch.where(modes.unsqueeze(-1) == 2, (v - 1.0) * a_f, -a_f),
            ),
        )  # [E, S]
        masks = torch.stack(
            [
                _position_mask(iv, token_pos[r], prompt_lens[r])
                for r, iv in zip(entries.rows, entries.items, strict=True)
            ]
        )  # [E, S]
        dirs = sae.W_dec[feats].float()  # [E, d]
        norm_rows = torch.tensor([iv.normalize for iv in entries.items], device=dev)
        dirs = torch.where(
            norm_rows.unsqueeze(-1), dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12), dirs
        )
        contrib = (coeff * masks).unsqueeze(-1) * dirs.unsqueeze(1) * scale  # [E, S, d]
        delta = torch.zeros(h.shape, dtype=torch.float32, device=dev)
        return delta.index_add_(0, rows, contrib)

    def _read_tracked(self, point: HookPoint, h: Tensor) -> None:
        spec = self.tracked_spec.get(point)
        if not spec:
            return
        by_sae: dict[str, list[tuple[int, int, HookedSae, int]]] = defaultdict(list)
        for item in spec:
            by_sae[item[2].id].append(item)
        for items in by_sae.values():
            sae = items[0][2].sae
            rows = torch.tensor([r for r, _, _, _ in items], device=h.device)
            feats = torch.tensor([f for _, _, _, f in items], device=h.device)
            uniq, inverse = torch.unique(rows, return_inverse=True)
            a_f, _ = feature_activations(sae, h[uniq, -1:], inverse, feats)  # [E, 1]
            for (r, j, _, _), value in zip(items, a_f[:, 0].tolist(), strict=True):
                self.tracked[r][j] = value


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
