"""Attribution: which SAE features drove a next-token logit, and which tokens drove a feature.

``attribute`` runs one prompt forward to its logits and one backward pass, and explains the
metric m = logit(target) (or logit(target) - logit(contrast)) at the prompt's last position
t by the features active at t, per SAE. At the SAE's hook point the activation splits
exactly as

    h_t = sum_f a_f u_f + c + e,   u_f = W_dec[f] * s,   c = b_dec * s (+ mean),

with ``s`` (and ``mean``) the SAE's input normalisation at this token held fixed (1 for
none, 1/scale for a dataset scale, the token's std for a per-token LayerNorm), and
``e = h_t - x_hat`` the reconstruction error, a constant.

- **Direct effect** (the features' path straight down the residual stream to the
  unembedding, blocks in between skipped): ``a_f * w . (g * P u_f) / sigma`` with
  ``w = W_U[target] (- W_U[contrast])``; ``g * P`` is the final norm's direction map and
  ``W_U`` rows are applied by ``feature_math.unembed_directions`` (as GetFeature's logit
  effects), and ``sigma`` the final norm's scale of the token's own final residual
  (``ArchitectureLayout.final_norm_scale``: the frozen-norm linearisation). Identity: the
  features, ``e`` and ``c`` sum to the direct path of ``h_t``, ``w . (g * P h_t) / sigma``;
  for an SAE at the last block's output that is the logit less the final norm's bias term,
  ``w . b`` (Gemma-2's soft cap aside).
- **Total effect** (activation x gradient): ``a_f * u_f . dm/dh_t``, the gradient taken by
  autograd through every later block with the model's forward value unchanged (so equal to
  d m / d a_f with the error held constant). Identity: the features, ``e . grad`` and
  ``c . grad`` sum to ``h_t . grad``.

``attribute_feature`` is the reverse: for feature f of one SAE at position p, the gradient
of its pre-activation with respect to the input token embeddings, times the embeddings,
summed over d_model, per position <= p (gradient x input).

Gradients are taken with ``torch.autograd.grad`` on activations only (model and SAE
parameters never require grad, so nothing accumulates ``.grad``); all other work runs under
``torch.no_grad``. Callers serialise it with other forward passes on the model (the
replica's lock), as Decompose does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saeserve.engine.feature_math import LATENTS_PER_CHUNK, feature_directions, unembed_directions
from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.errors import InvalidArgument
from saeserve.model.hookpoints import HookKind, HookPoint, forward_until
from saeserve.sae.base import InputNorm, NormContext, Sae


@dataclass
class AttributionRequest:
    """Explain the next-token logit after ``token_ids``."""

    token_ids: list[int]
    sae_ids: list[str] = field(default_factory=list)
    """SAEs to attribute over; empty = all."""
    target: int | None = None
    """Token id whose logit is explained; None = the model's argmax."""
    contrast: int | None = None
    """Explain logit(target) - logit(contrast) instead; None = the target's logit alone."""
    top_n: int = 10


@dataclass
class FeatureEffect:
    feature: int
    activation: float
    direct: float
    total: float


@dataclass
class EffectTerms:
    """How one measure of one SAE splits: ``features + error + bias == whole``."""

    features: float
    error: float
    bias: float
    whole: float


@dataclass
class SaeAttribution:
    sae_id: str
    hook_point: str
    active: int
    """Features active at the position."""
    has_direct_path: bool
    """False where the hook point writes nowhere the residual stream carries to the
    unembedding (a module path): direct effects are then 0."""
    direct_positive: list[FeatureEffect]
    direct_negative: list[FeatureEffect]
    total_positive: list[FeatureEffect]
    total_negative: list[FeatureEffect]
    direct: EffectTerms
    total: EffectTerms


@dataclass
class TokenLogit:
    token_id: int
    logit: float
    probability: float


@dataclass
class AttributionResult:
    position: int
    target: TokenLogit
    contrast: TokenLogit | None
    metric: float
    """The explained number: the target's logit, less the contrast's when there is one."""
    saes: list[SaeAttribution]


@dataclass
class FeatureInputRequest:
    """Which input tokens drove ``feature`` of ``sae_id`` at ``position``."""

    token_ids: list[int]
    sae_id: str
    feature: int
    position: int | None = None
    """None = the last token."""
    top_n: int = 10


@dataclass
class FeatureInputResult:
    sae_id: str
    hook_point: str
    feature: int
    position: int
    pre_activation: float
    activation: float
    attributions: list[float]
    """[position + 1] gradient x input of each position 0..position."""
    top_positive: list[int]
    """Positions with the largest positive attributions, largest first."""
    top_negative: list[int]


# --- next-token logit -----------------------------------------------------------------
def attribute(
    served: ServedModel, req: AttributionRequest, *, field: str = ""
) -> AttributionResult:
    """See the module docstring. Errors name the request's fields under ``field``."""
    lm = served.lm
    saes = served.select(req.sae_ids, field_name=_named(field, "saes"))
    if not saes:
        raise InvalidArgument(f"{_named(field, 'saes')}: model {served.name!r} has no SAEs loaded")
    if not req.token_ids:
        raise InvalidArgument(f"{_named(field, 'prompt')}: at least one token is required")
    w_u = lm.layout.unembed_weight(lm.model).detach()  # [vocab, d_model]
    for name, token in (("target", req.target), ("contrast", req.contrast)):
        if token is not None and not 0 <= token < w_u.shape[0]:
            raise InvalidArgument(
                f"{_named(field, name)}.id: {token} must be in [0, {w_u.shape[0]}) (vocab)"
            )
    by_point: dict[HookPoint, list[HookedSae]] = defaultdict(list)
    for h in saes:
        by_point[h.hook_point].append(h)
    t = len(req.token_ids) - 1

    acts, logits, final = _forward_with_grad(served, list(by_point), req.token_ids)
    with torch.enable_grad():
        target = int(logits.argmax()) if req.target is None else req.target
        metric = logits[target] - (logits[req.contrast] if req.contrast is not None else 0.0)
        points = list(by_point)
        # a point the logits do not depend on (a module off the path) gets a zero gradient
        grads = torch.autograd.grad(metric, [acts[p.name] for p in points], materialize_grads=True)
    with torch.no_grad():
        probs = torch.softmax(logits.detach(), dim=-1)
        rows = [target] if req.contrast is None else [target, req.contrast]
        unembed = _direct_path(
            served, w_u[rows], float(lm.layout.final_norm_scale(lm.model, final[0, t]))
        )
        out = []
        for point, grad in zip(points, grads, strict=True):
            h_t, g_t = acts[point.name][0, t].detach().float(), grad[0, t].float()
            for hooked in by_point[point]:
                out.append(_sae_attribution(hooked, h_t, g_t, unembed, req.top_n))

        def logit_of(i: int) -> TokenLogit:
            return TokenLogit(i, float(logits[i]), float(probs[i]))

        return AttributionResult(
            position=t,
            target=logit_of(target),
            contrast=logit_of(req.contrast) if req.contrast is not None else None,
            metric=float(metric),
            saes=[out[i] for i in _order(saes, out)],
        )


def _named(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _order(saes: list[HookedSae], out: list[SaeAttribution]) -> list[int]:
    """Indices of ``out`` in the request's SAE order."""
    where = {a.sae_id: i for i, a in enumerate(out)}
    return [where[h.id] for h in saes]


def _forward_with_grad(
    served: ServedModel, points: list[HookPoint], token_ids: list[int]
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """One forward with grad from the first hook point on: each point's activation
    [1, N, d] by name (a leaf where nothing before it needs grad), the last position's
    logits [vocab] (float32) and the final norm's input [1, N, d]."""
    lm = served.lm
    acts: dict[str, Tensor] = {}

    def keep(point: HookPoint) -> Callable[[Tensor], Tensor]:
        def fn(act: Tensor) -> Tensor:
            if not act.requires_grad:  # the first point reached: gradients start here
                act = act.detach().requires_grad_(True)
            acts[point.name] = act
            return act  # the tensor the rest of the model reads, so the gradient reaches it

        return fn

    final: list[Tensor] = []

    def keep_final(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        final.append(args[0].detach())

    handle = lm.layout.final_norm(lm.model).register_forward_pre_hook(keep_final)
    ids = torch.tensor([token_ids], device=lm.device)
    try:
        with torch.enable_grad():
            out = forward_until(
                lm,
                {p: keep(p) for p in points},
                stop_after=None,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                logits_to_keep=1,
            )
            logits = out.logits[0, -1].float()
    finally:
        handle.remove()
    return acts, logits, final[0]


DirectPath = Callable[[Tensor], Tensor]
"""[n, d] directions at the final residual -> [n] their direct effect on the metric."""


def _direct_path(served: ServedModel, rows: Tensor, sigma: float) -> DirectPath:
    """``w . (g * P v) / sigma`` for the metric's unembedding rows [1 or 2, d_model]."""
    lm = served.lm
    norm_map = lm.layout.final_norm_direction_map(lm.model)

    def direct(v: Tensor) -> Tensor:
        effects = unembed_directions(v.to(rows.device), rows, norm_map) / sigma  # [n, rows]
        return effects[:, 0] - effects[:, 1] if rows.shape[0] == 2 else effects[:, 0]

    return direct


def _reaches_unembedding(hooked: HookedSae, d_model: int) -> bool:
    """Portable points are (or are added to) the residual stream; module outputs are not."""
    return hooked.hook_point.kind is not HookKind.MODULE and hooked.sae.d_in == d_model


def _sae_attribution(
    hooked: HookedSae, h: Tensor, grad: Tensor, direct_path: DirectPath, top_n: int
) -> SaeAttribution:
    """One SAE's features at one token: h, grad [d] float32."""
    sae = hooked.sae
    x = h.unsqueeze(0)  # [1, d]
    _, ctx = sae.normalize(x)
    latents = sae.encode(x)  # [1, d_sae]
    ids = latents[0].nonzero().squeeze(-1)  # ascending: ties below go to the lower id
    values = latents[0, ids].float()
    error = h - sae.decode(latents, ctx)[0].float()
    bias = sae.denormalize(sae.b_dec.unsqueeze(0), ctx)[0].float()
    d_model = int(grad.shape[-1])
    has_direct = _reaches_unembedding(hooked, d_model)

    total, direct = [], []
    for start in range(0, int(ids.numel()), LATENTS_PER_CHUNK):
        u = _model_directions(sae, ids[start : start + LATENTS_PER_CHUNK], ctx).to(grad.device)
        total.append(u @ grad)
        direct.append(direct_path(u) if has_direct else torch.zeros(len(u), device=grad.device))
    total_f = values * torch.cat(total) if total else values
    direct_f = values * torch.cat(direct).to(values.device) if direct else values

    rest = torch.stack([error, bias, h])  # [3, d]
    rest_total = rest @ grad
    rest_direct = direct_path(rest) if has_direct else torch.zeros(3)

    def effects(order: Tensor) -> list[FeatureEffect]:
        return [
            FeatureEffect(int(ids[i]), float(values[i]), float(direct_f[i]), float(total_f[i]))
            for i in order.tolist()
        ]

    return SaeAttribution(
        sae_id=hooked.id,
        hook_point=hooked.hook_point.name,
        active=int(ids.numel()),
        has_direct_path=has_direct,
        direct_positive=effects(_top(direct_f, top_n, positive=True)),
        direct_negative=effects(_top(direct_f, top_n, positive=False)),
        total_positive=effects(_top(total_f, top_n, positive=True)),
        total_negative=effects(_top(total_f, top_n, positive=False)),
        direct=EffectTerms(float(direct_f.sum()), *(float(v) for v in rest_direct)),
        total=EffectTerms(float(total_f.sum()), *(float(v) for v in rest_total)),
    )


def _model_directions(sae: Sae, ids: Tensor, ctx: NormContext) -> Tensor:
    """[n, d] float32 u_f: the model-space change per unit of each feature at this token
    (``feature_directions``, times the token's std for a per-token LayerNorm input)."""
    u = feature_directions(sae, ids)
    if sae.cfg.input_norm is InputNorm.LAYERNORM:
        u = u * torch.as_tensor(ctx.scale, dtype=u.dtype).reshape(())
    return u


def _top(values: Tensor, n: int, *, positive: bool) -> Tensor:
    """Indices of the n largest positive (or most negative) values, strongest first; ties
    keep the earlier index."""
    signed = values if positive else -values
    order = torch.sort(signed, descending=True, stable=True).indices
    return order[signed[order] > 0][:n]


# --- a feature's input tokens -----------------------------------------------------------
def attribute_feature(
    served: ServedModel, req: FeatureInputRequest, *, field: str = ""
) -> FeatureInputResult:
    """See the module docstring: gradient x input of one feature's pre-activation. Errors
    name the request's fields under ``field``."""
    lm = served.lm
    hooked = served.sae(req.sae_id, field_name=_named(field, "sae"))
    sae = hooked.sae
    if not 0 <= req.feature < sae.d_sae:
        raise InvalidArgument(
            f"{_named(field, 'feature')}: {req.feature} must be in [0, {sae.d_sae}) (d_sae)"
        )
    n = len(req.token_ids)
    if not n:
        raise InvalidArgument(f"{_named(field, 'prompt')}: at least one token is required")
    p = n - 1 if req.position is None else req.position
    if not 0 <= p < n:
        raise InvalidArgument(
            f"{_named(field, 'position')}: {p} must be in [0, {n}) (the prompt's tokens)"
        )
    ids = torch.tensor([req.token_ids[: p + 1]], device=lm.device)  # later tokens cannot matter
    with torch.no_grad():
        embeds = lm.layout.embed(lm.model)(ids)
    embeds.requires_grad_(True)
    acts: list[Tensor] = []
    point = hooked.hook_point
    with torch.enable_grad():
        forward_until(
            lm,
            {point: acts.append},
            stop_after=point,
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(ids),
        )
        x = acts[0][0, p].unsqueeze(0)  # [1, d]
        x_n, _ = sae.normalize(x)
        pre = sae.pre_activations(x_n)[0, req.feature]
        (grad,) = torch.autograd.grad(pre, embeds)
    with torch.no_grad():
        attributions = (grad * embeds).float().sum(dim=-1)[0]  # [p + 1]
        activation = float(sae.encode(x.detach())[0, req.feature])
        return FeatureInputResult(
            sae_id=hooked.id,
            hook_point=point.name,
            feature=req.feature,
            position=p,
            pre_activation=float(pre),
            activation=activation,
            attributions=attributions.tolist(),
            top_positive=_top(attributions, req.top_n, positive=True).tolist(),
            top_negative=_top(attributions, req.top_n, positive=False).tolist(),
        )
