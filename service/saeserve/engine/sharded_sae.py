"""An SAE whose latents live on shards: the same interface as ``Sae``, answered exactly.

``ShardedSae`` is what the engine sees for a sharded SAE: decomposition, steering,
tracking, feature math and index building call ``encode_sparse`` and ``decoder_rows`` on
it as on any ``Sae``. It holds the config and b_dec; each ``ShardEndpoint``
(``engine.sae_shards``) holds a latent range. Per ``encode_sparse`` the model replica
normalises the input, sends it to every shard once (d_in values per token) and merges:

- TopK: every shard returns its local top k (k values + k ids per token). The global top
  k is among them, so the merged top k of the union is the SAE's own; a stable sort puts
  the lower id first among equal values (unsharded ``torch.topk`` leaves that order
  unspecified: identity holds wherever the k+1 largest pre-activations differ, i.e. always
  but for duplicate latents). Slots with value 0 (fewer than k latents positive) carry
  unspecified ids, as every reader ignores them. A feature's activation is its value
  among the merged k (CLAMP/SCALE/ABLATE's exact TopK membership). The reconstruction
  takes a second call: each shard sums its kept latents' decoder rows (d_in values per
  token back), the model replica adds the parts and b_dec. O(k * shards + d_in) per
  token and shard link, never O(d_sae).
- ReLU/JumpReLU: activations are per latent, so each shard returns its n strongest, the
  asked features it owns and its partial reconstruction in one call; only the owning
  shards are asked when features alone are wanted (steering, tracking).

Decoder rows (steering directions, logit effects) are fetched from the owning shard and
kept (``ROW_CACHE``): an ADD costs one fetch per feature, not one per step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from saeserve.engine.cosine_rank import Ranked, merge_ranked
from saeserve.engine.sae_shards import (
    LatentRange,
    LocalShard,
    SaeShard,
    ShardEncoding,
    ShardEndpoint,
    latent_ranges,
    shard_sae,
)
from saeserve.errors import InvalidArgument
from saeserve.sae.base import ActiveLatents, Encoding, Sae, SaeConfig

ROW_CACHE = 4096
"""Decoder rows a ShardedSae keeps (12 MiB at d_in 768 in float32)."""


class ShardedSae(Sae):
    """See the module docstring; ``shards`` tile [0, d_sae) in order."""

    holds_encoder = False

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def weight_bytes(self) -> int:
        """Bytes of the weights on all the shards (W_enc, W_dec, b_enc and threshold per
        latent, as each shard's ``Sae`` holds them) and b_dec here, in the SAE's dtype."""
        per_latent = 2 * self.d_in + 2
        return (self.d_sae * per_latent + self.d_in) * self.b_dec.element_size()

    def __init__(self, cfg: SaeConfig, b_dec: Tensor, shards: Sequence[ShardEndpoint]) -> None:
        nn.Module.__init__(self)  # no W_enc / W_dec here: they are on the shards
        self.cfg = cfg
        latent_ranges(cfg.d_sae, ranges=[s.latents for s in shards])  # tiles [0, d_sae)
        self.shards = list(shards)
        self.b_dec = nn.Parameter(b_dec.detach().clone(), requires_grad=False)
        self._rows: OrderedDict[int, Tensor] = OrderedDict()

    def _owner(self, feature: int) -> int:
        for i, s in enumerate(self.shards):
            if s.latents.start <= feature < s.latents.stop:
                return i
        raise InvalidArgument(f"feature {feature} is not in [0, {self.d_sae}) (d_sae)")

    def _by_owner(self, features: Tensor) -> list[tuple[int, Tensor]]:
        """(shard, positions in ``features``) for every shard owning one of them."""
        out = []
        f = features.cpu()
        for i, s in enumerate(self.shards):
            pos = ((f >= s.latents.start) & (f < s.latents.stop)).nonzero().flatten()
            if len(pos):
                out.append((i, pos))
        return out

    # --- encode ----------------------------------------------------------------------
    def encode_sparse(
        self,
        x: Tensor,
        *,
        k: int | None = None,
        features: Tensor | None = None,
        reconstruct: bool = False,
        count_fires: bool = False,
        block_bytes: int | None = None,
    ) -> Encoding:
        """``Sae.encode_sparse`` over the shards (see the module docstring)."""
        lead, device = x.shape[:-1], x.device
        x_n, ctx = self.normalize(x.reshape(-1, self.d_in))
        if self.cfg.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        if self.is_topk:
            values, indices, recon = self._topk(x_n, block_bytes, reconstruct)
            n_top = (self.cfg.k or 0) if k is None else min(k, self.cfg.k or 0)
            feats = fires = None
            if features is not None:  # [T, F]: the value where f is among the k, else 0
                f = features.to(device)
                feats = (values.unsqueeze(-1) * (indices.unsqueeze(-1) == f)).sum(1)
            if count_fires:
                fires = torch.bincount(indices[values > 0], minlength=self.d_sae)
            values, indices = values[:, :n_top], indices[:, :n_top]
        else:
            values, indices, feats, recon, fires = self._dense(
                x_n, min(k or 0, self.d_sae), features, reconstruct, count_fires, block_bytes
            )
        if recon is not None:
            recon = self.denormalize((recon + self.b_dec.float()).to(self.b_dec.dtype), ctx)
        return Encoding(
            values=values.to(self.b_dec.dtype).reshape(*lead, -1),
            indices=indices.reshape(*lead, -1),
            features=None if feats is None else feats.to(self.b_dec.dtype).reshape(*lead, -1),
            reconstruction=None if recon is None else recon.reshape(*lead, self.d_in),
            fire_counts=fires,
        )

    def encode_bytes(self, tokens: int) -> int:
        """Bytes this replica holds for an encode over ``tokens`` tokens: the shards' answers,
        k (or the asked n) values and ids per token and shard (the [rows, d_sae] blocks
        are the shards' own)."""
        per_token = len(self.shards) * max(self.cfg.k or 0, 1) * (4 + 8)
        return 2 * max(tokens, 1) * per_token

    def encode_active(self, x: Tensor, *, block_bytes: int | None = None) -> ActiveLatents:
        """``Sae.encode_active`` from the merged top k: a TopK SAE's active latents are its
        k per token. A sharded ReLU or JumpReLU SAE would have to send every active latent
        of every shard, so it is refused."""
        if not self.is_topk:
            raise InvalidArgument(
                f"saes: SAE {self.cfg.id!r} is a sharded {self.cfg.activation} SAE; "
                "InspectFeatures and ContrastFeatures need every active latent, which only "
                "a TopK SAE's shards send"
            )
        enc = self.encode_sparse(x, block_bytes=block_bytes)
        row, col = (enc.values > 0).nonzero(as_tuple=True)  # row-major: rows ascending
        return ActiveLatents(row, enc.indices[row, col], enc.values[row, col])

    def _topk(
        self, x_n: Tensor, block_bytes: int | None, reconstruct: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The merged top k [T, k] (values ReLU'd, ids) and, if asked, the SAE-space
        reconstruction without b_dec [T, d_in] float32."""
        device = x_n.device
        pending = [s.encode(x_n, 0, None, False, False, block_bytes) for s in self.shards]
        values, indices = _merged_top([p.result() for p in pending], self.cfg.k or 0, device)
        recon = None
        if reconstruct:
            pending_d = [s.decode(values, indices) for s in self.shards]
            recon = sum((p.result().to(device) for p in pending_d), torch.zeros_like(x_n).float())
        return values, indices, recon

    def _dense(
        self,
        x_n: Tensor,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
        block_bytes: int | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """ReLU/JumpReLU: (top values, ids, features, partial reconstruction, fires)."""
        device = x_n.device
        owners = dict(self._by_owner(features)) if features is not None else {}
        everyone = bool(n_top or reconstruct or count_fires)
        asked = [i for i in range(len(self.shards)) if everyone or i in owners]
        pending = {
            i: self.shards[i].encode(
                x_n,
                min(n_top, self.shards[i].latents.width),
                None if features is None or i not in owners else features.cpu()[owners[i]],
                reconstruct,
                count_fires,
                block_bytes,
            )
            for i in asked
        }
        parts = {i: p.result() for i, p in pending.items()}
        n_tok = x_n.shape[0]
        values = x_n.new_zeros(n_tok, 0).float()
        indices = torch.zeros(n_tok, 0, dtype=torch.long, device=device)
        if n_top:
            values, indices = _merged_top(list(parts.values()), n_top, device)
        feats = None
        if features is not None:
            feats = torch.zeros(n_tok, len(features), device=device)
            for i, pos in owners.items():
                got = parts[i].features
                assert got is not None
                feats[:, pos.to(device)] = got.to(device)
        recon = fires = None
        if reconstruct:
            recon = sum(
                (p.partial.to(device) for p in parts.values() if p.partial is not None),
                torch.zeros(n_tok, self.d_in, device=device),
            )
        if count_fires:
            fires = torch.cat([parts[i].fire_counts.to(device) for i in asked])  # type: ignore[union-attr]
        return values, indices, feats, recon, fires

    # --- weights ---------------------------------------------------------------------
    def decoder_rows(self, features: Tensor) -> Tensor:
        """[F, d_in] W_dec rows, from the owning shards (one call per shard for the rows
        not already kept)."""
        ids = [int(f) for f in features.tolist()]
        outside = [f for f in ids if not 0 <= f < self.d_sae]
        if outside:
            raise InvalidArgument(f"features: {outside[:8]} are not in [0, {self.d_sae}) (d_sae)")
        missing = sorted({f for f in ids if f not in self._rows})
        if missing:
            want = torch.tensor(missing, dtype=torch.long)
            owned = self._by_owner(want)
            pending = [(pos, self.shards[i].decoder_rows(want[pos])) for i, pos in owned]
            for pos, p in pending:
                for f, row in zip(want[pos].tolist(), p.result(), strict=True):
                    self._rows[f] = row.to(self.b_dec.device)
        for f in ids:
            self._rows.move_to_end(f)
        out = (
            torch.stack([self._rows[f] for f in ids]) if ids else self.b_dec.new_zeros(0, self.d_in)
        )
        while len(self._rows) > ROW_CACHE:
            self._rows.popitem(last=False)
        return out

    def nearest_latents(self, feature: int, n: int) -> tuple[Ranked, Ranked]:
        """The n latents nearest ``feature`` by decoder-row and encoder-column cosine: the
        owner gives the feature's vectors, every shard ranks its range, then a merge."""
        owner = self.shards[self._owner(feature)]
        f = torch.tensor([feature])
        dec_q, enc_q = owner.decoder_rows(f), owner.encoder_columns(f)
        dq, eq = dec_q.result()[0].cpu(), enc_q.result()[0].cpu()
        pending = [s.nearest(dq, eq, n, feature) for s in self.shards]
        parts = [p.result() for p in pending]
        return (
            merge_ranked([p[0] for p in parts], n),
            merge_ranked([p[1] for p in parts], n),
        )


def _merged_top(parts: list[ShardEncoding], n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The n strongest [T, n] (values, ids) of the shards' candidates, given in latent
    order: a stable sort keeps the lower id first among equal values."""
    cand_v = torch.cat([p.values.to(device) for p in parts], dim=-1)  # [T, sum of n_s]
    cand_i = torch.cat([p.indices.to(device) for p in parts], dim=-1)
    order = torch.sort(cand_v, dim=-1, descending=True, stable=True).indices[:, :n]
    return cand_v.gather(-1, order), cand_i.gather(-1, order)


def split_in_process(
    sae: Sae, *, shards: int = 0, ranges: Sequence[Sequence[int]] = ()
) -> ShardedSae:
    """``sae`` split into in-process shards (``LocalShard``): engine tests and benchmarks."""
    tensors = {name: (name, t.detach()) for name, t in sae.named_parameters()}
    device = sae.W_enc.device
    endpoints = [
        LocalShard(SaeShard(shard_sae(sae.cfg, tensors, r, device=device), r))
        for r in latent_ranges(sae.d_sae, shards=shards, ranges=ranges)
    ]
    return ShardedSae(sae.cfg, sae.b_dec, endpoints)


__all__ = ["LatentRange", "ShardedSae", "split_in_process"]
