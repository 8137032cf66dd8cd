"""Feature math on the weights alone: the tokens a feature promotes and suppresses, and
its nearest features.

GetFeature (server/feature_view.py) and the feature index (insight/index.py) both call
``logit_effects``; nothing else computes them. ``nearest_features`` (GetFeature's
neighbours) ranks every other feature by the cosine of its decoder row, and of its encoder
column, with the feature's own, exactly, in chunks of latents: memory O(chunk * d_in),
never a [d_sae x d_sae] matrix.

**Direction in the model's space.** One unit of feature f's activation adds ``u_f`` to the
activation at the SAE's hook point, where d_f = W_dec[f] is mapped out of the SAE's space
as DESIGN.md's steering section does:

- ``input_norm`` none: ``u_f = d_f``;
- ``input_norm`` scale (the SAE reads ``x * s``): ``u_f = d_f / s``;
- ``input_norm`` layernorm (the SAE reads ``(x - mean) / std`` per token): the change is
  ``d_f * std`` of the token, and there is no token here, so ``u_f = d_f``: effects are per
  unit of activation at a token of std 1 (a positive per-token factor; ranks are unchanged).

**Through the final norm (the linearisation).** The logits are ``W_U @ N(x)`` for the
final norm ``N(x) = g * P x / sigma(x) (+ b)``, where P subtracts the mean for a LayerNorm
(GPT-2, GPT-NeoX) and is the identity for an RMSNorm (Llama, Mistral, Qwen2, Gemma),
``sigma(x)`` is the token's std or RMS (eps included), and the gain g is the norm's weight
(Gemma, Gemma-2: ``1 + weight``). N's derivative at x along u is

    J_x u = g * (P u - xh * (xh . P u) / d) / sigma(x),    xh = P x / sigma(x).

The effect reported is the part of it that does not depend on a token:

    effect_f = W_U @ (g * P u_f)

the centring and the gain are kept; the division by the token's scale ``sigma(x)`` is
dropped (a positive factor per token: it scales every token's effects alike and leaves the
ranking alone), and so is the term along the token's own normalised vector (zero whenever
that vector is orthogonal to ``P u_f``). Equivalently, ``effect_f`` is the exact JVP of
``W_U @ N`` at any x with ``sigma(x) = 1`` and ``P x`` orthogonal to ``u_f``; the tests
measure it that way on the real norm modules. Biases (b, an unembedding bias) do not move
with a direction; Gemma-2's final-logit soft cap is monotone and not applied. Only the
direct path is read: blocks after the hook point are not run (the usual logit lens).

An SAE whose width is not the model's (e.g. MLP neurons) has no such path and gets n = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saeserve.engine.cosine_rank import neighbours, rank_by_cosine
from saeserve.engine.sharded_sae import ShardedSae
from saeserve.engine.types import FeatureNeighbours, LogitEffects, TokenEffect
from saeserve.model.architectures import NormDirectionMap
from saeserve.sae.base import InputNorm, Sae

if TYPE_CHECKING:
    from saeserve.model.loader import LoadedModel

EFFECTS_PER_CHUNK = 2**26
"""Most effect values [features x vocab] held at once (256 MB of float32)."""
VOCAB_BLOCK = 2**15
"""Rows of W_U converted to float32 at a time, so a bf16 model never gets a float32 copy."""
LATENTS_PER_CHUNK = 2**16
"""Decoder rows / encoder columns compared at a time by ``nearest_features``."""


def feature_directions(sae: Sae, features: Tensor | None = None) -> Tensor:
    """[F, d_in] float32 ``u_f``: the model-space change per unit of each feature's
    activation (see the module docstring); every feature when ``features`` is None."""
    ids = torch.arange(sae.d_sae) if features is None else features
    d_f = sae.decoder_rows(ids).detach().float()
    if sae.cfg.input_norm is InputNorm.SCALE:
        d_f = d_f / sae.cfg.norm_scale
    return d_f


def logit_effects(
    lm: LoadedModel,
    sae: Sae,
    n: int,
    *,
    features: Sequence[int] | None = None,
    through_final_norm: bool = True,
    chunk: int | None = None,
) -> LogitEffects:
    """The n most promoted / suppressed tokens of ``features`` (default: all) of ``sae``.

    ``through_final_norm`` False leaves the norm out (``W_U @ u_f``, the "plain" lens).
    Features are processed ``chunk`` at a time (default: as many as keep one chunk's
    effects under ``EFFECTS_PER_CHUNK`` values).
    """
    layout = lm.layout
    w_u = layout.unembed_weight(lm.model).detach()  # [vocab, d_model]
    ids = (
        torch.arange(sae.d_sae)
        if features is None
        else torch.tensor(list(features), dtype=torch.int64)
    )
    if sae.d_in != w_u.shape[1]:  # not the residual width: no direct path to the logits
        n = 0
    n = min(n, int(w_u.shape[0]))
    norm_map = layout.final_norm_direction_map(lm.model) if through_final_norm else None
    chunk = chunk or max(1, EFFECTS_PER_CHUNK // int(w_u.shape[0]))
    found: list[tuple[Tensor, ...]] = []
    with torch.no_grad():
        for start in range(0, int(ids.numel()) if n else 0, chunk):
            u = feature_directions(sae, ids[start : start + chunk]).to(w_u.device)
            effects = unembed_directions(u, w_u, norm_map)  # [c, vocab]
            up = torch.topk(effects, n, dim=-1, largest=True, sorted=True)
            down = torch.topk(effects, n, dim=-1, largest=False, sorted=True)
            found.append(tuple(t.cpu() for t in (up.indices, up.values, down.indices, down.values)))
    if not found:  # no features asked for, or n == 0
        none = torch.zeros(int(ids.numel()), n)
        found.append((none.long(), none, none.long(), none))
    return LogitEffects(*(torch.cat([f[i] for f in found]).numpy() for i in range(4)))


def unembed_directions(u: Tensor, w_u: Tensor, norm_map: NormDirectionMap | None) -> Tensor:
    """[c, vocab] float32 ``W_U @ (g * P u)`` of directions u [c, d] (no norm: ``W_U @ u``)."""
    v = norm_map.apply(u) if norm_map is not None else u.float()
    blocks = [v @ w_u[i : i + VOCAB_BLOCK].float().T for i in range(0, w_u.shape[0], VOCAB_BLOCK)]
    return torch.cat(blocks, dim=-1)


def feature_token_effects(
    lm: LoadedModel, sae: Sae, feature: int, n: int
) -> tuple[list[TokenEffect], list[TokenEffect]]:
    """(promoted, suppressed) tokens of one feature, with their texts (``logit_effects``)."""
    effects = logit_effects(lm, sae, n, features=[feature])

    def rows(ids: list[int], values: list[float]) -> list[TokenEffect]:
        return [
            TokenEffect(str(lm.tokenizer.decode([i])), v, i)
            for i, v in zip(ids, values, strict=True)
        ]

    return (
        rows(effects.promoted_ids[0].tolist(), effects.promoted[0].tolist()),
        rows(effects.suppressed_ids[0].tolist(), effects.suppressed[0].tolist()),
    )


def nearest_features(
    sae: Sae, feature: int, n: int, *, chunk: int = LATENTS_PER_CHUNK
) -> FeatureNeighbours:
    """The n features of ``sae`` nearest to ``feature`` by decoder-row cosine and by
    encoder-column cosine, the feature itself excluded (see ``FeatureNeighbours``).

    Cosines are float32 over the stored weights (the decoder's scaling by an SAE's input
    norm is one factor for all rows and changes no cosine); a zero vector has cosine 0
    with every other. A sharded SAE ranks on its shards and merges (``cosine_rank``).
    """
    if isinstance(sae, ShardedSae):
        decoder, encoder = sae.nearest_latents(feature, n)
        return FeatureNeighbours(decoder=neighbours(decoder), encoder=neighbours(encoder))
    with torch.no_grad():
        w_dec, w_enc_t = sae.W_dec.detach(), sae.W_enc.detach().T
        return FeatureNeighbours(
            decoder=neighbours(
                rank_by_cosine(w_dec, w_dec[feature], n, chunk=chunk, exclude=feature)
            ),
            encoder=neighbours(
                rank_by_cosine(w_enc_t, w_enc_t[feature], n, chunk=chunk, exclude=feature)
            ),
        )
