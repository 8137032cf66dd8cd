"""Per-feature context slots kept while an index streams: the top contexts and the samples.

A ``KeptContexts`` holds, for every feature, the ``n`` contexts with the highest score seen
so far, each with its max position, max value and the feature's value at every token.
The feature index keeps two: one scored by the context's max activation (the top
contexts) and one scored by ``sample_keys``, a seeded hash of (feature, context), which
makes it a uniform random sample of the contexts the feature fired in (bottom-k
sampling: each pair gets an independent uniform key, the n largest keys win). The keys
depend only on the seed and the ids, never on batch order or device, so a build is
reproducible. Memory is O(d_sae * n * context_length).

``ContextPairs`` is one batch's (feature, context) pairs, computed once and merged into
both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_U64 = 1 << 64
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _int64(c: int) -> int:
    """The signed int64 with the same 64 bits as unsigned ``c``."""
    return c - _U64 if c >= 1 << 63 else c


def _shift_right(x: Tensor, s: int) -> Tensor:
    """Logical (unsigned) right shift of int64 bits."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finalizer on int64 tensors (arithmetic mod 2**64)."""
    x = x ^ _shift_right(x, 30)
    x = x * _int64(_MIX1)
    x = x ^ _shift_right(x, 27)
    x = x * _int64(_MIX2)
    return x ^ _shift_right(x, 31)


def sample_keys(seed: int, features: Tensor, contexts: Tensor) -> Tensor:
    """[P] float64 uniform keys in [0, 1) of (feature, global context id) pairs.

    ``mix(mix(seed + feature * G) + context * G)`` over unsigned 64-bit integers (G the
    golden-ratio constant, mix splitmix64's finalizer), top 53 bits divided by 2**53.
    """
    golden = _int64(_GOLDEN)
    x = _mix(features.long() * golden + _int64(seed % _U64))
    x = _mix(x + contexts.long() * golden)
    return _shift_right(x, 11).double() / float(1 << 53)


@dataclass
class ContextPairs:
    """One batch's (feature, context) pairs and the active tokens they come from."""

    n_rows: int
    """Contexts in the batch."""
    first_id: int
    """Global id of the batch's first context."""
    token_pair: Tensor
    """[M] int64: each active token's pair (index into the pair tensors)."""
    token_pos: Tensor
    """[M] int64: each active token's position in its context."""
    token_value: Tensor
    """[M] float32: each active token's activation."""
    feature: Tensor
    """[P] int64, pairs sorted by (feature, context row)."""
    row: Tensor
    """[P] int64: the context's row in the batch."""
    max_value: Tensor
    """[P] float32: the feature's max over the context."""
    max_pos: Tensor
    """[P] int64: first position of that max."""

    @classmethod
    def from_tokens(
        cls, f: Tensor, v: Tensor, b: Tensor, t: Tensor, n_rows: int, first_id: int, length: int
    ) -> ContextPairs:
        """Pairs of active tokens (feature f, value v, context row b, position t)."""
        uniq, inv = torch.unique(f * n_rows + b, return_inverse=True)
        seg_max = torch.zeros(uniq.numel(), device=v.device)
        seg_max.scatter_reduce_(0, inv, v, "amax", include_self=False)
        at_max = torch.where(v == seg_max[inv], t, length)  # earliest max position wins
        seg_pos = torch.full_like(uniq, length).scatter_reduce_(0, inv, at_max, "amin")
        return cls(
            n_rows=n_rows,
            first_id=first_id,
            token_pair=inv,
            token_pos=t,
            token_value=v,
            feature=uniq // n_rows,
            row=uniq % n_rows,
            max_value=seg_max,
            max_pos=seg_pos,
        )

    @property
    def context_id(self) -> Tensor:
        """[P] global context ids."""
        return self.first_id + self.row


@dataclass
class KeptArrays:
    """Host arrays of a ``KeptContexts``; slot s = feature * n + rank."""

    context: np.ndarray
    """[d_sae, n] int64 global context ids, -1 for an empty slot."""
    max_pos: np.ndarray
    """[d_sae, n] int16."""
    max_value: np.ndarray
    """[d_sae, n] float32, 0 for an empty slot."""
    value_offsets: np.ndarray
    """[d_sae * n + 1] int64 CSR row pointers of the slots' non-zero values."""
    value_pos: np.ndarray
    """[nnz] int16 positions."""
    value: np.ndarray
    """[nnz] float32 activations."""


class KeptContexts:
    """For each feature, the n highest-scoring contexts so far (higher score first)."""

    def __init__(self, d_sae: int, n: int, length: int, device: torch.device) -> None:
        self.n, self.length = n, length
        self.score = torch.full((d_sae, n), -math.inf, dtype=torch.float64, device=device)
        self.context = torch.full((d_sae, n), -1, dtype=torch.int64, device=device)
        self.max_pos = torch.zeros(d_sae, n, dtype=torch.int64, device=device)
        self.max_value = torch.zeros(d_sae, n, device=device)
        self.rows = torch.zeros(d_sae, n, length, device=device)  # [d_sae, n, T] per-token values

    def merge(self, pairs: ContextPairs, score: Tensor) -> None:
        """Merge the batch's pairs, scored by ``score`` [P], into the kept slots."""
        n, n_rows = self.n, pairs.n_rows
        if n == 0 or pairs.feature.numel() == 0:
            return
        dev = score.device
        feats, finv = torch.unique(pairs.feature, return_inverse=True)  # touched features [F]
        n_f = feats.numel()
        cand_score = torch.full((n_f, n + n_rows), -math.inf, dtype=torch.float64, device=dev)
        cand_score[:, :n] = self.score[feats]
        cand_score[finv, n + pairs.row] = score.double()
        cand_pos = torch.zeros(n_f, n + n_rows, dtype=torch.int64, device=dev)
        cand_pos[:, :n] = self.max_pos[feats]
        cand_pos[finv, n + pairs.row] = pairs.max_pos
        cand_max = torch.zeros(n_f, n + n_rows, device=dev)
        cand_max[:, :n] = self.max_value[feats]
        cand_max[finv, n + pairs.row] = pairs.max_value
        new_ids = pairs.first_id + torch.arange(n_rows, device=dev)
        cand_ctx = torch.cat([self.context[feats], new_ids.expand(n_f, n_rows)], dim=1)

        # stable: among equal scores the earlier context (already kept) stays first
        order = torch.sort(cand_score, dim=1, descending=True, stable=True).indices[:, :n]
        kept_score = cand_score.gather(1, order)
        self.score[feats] = kept_score
        self.context[feats] = cand_ctx.gather(1, order).masked_fill(kept_score == -math.inf, -1)
        self.max_pos[feats] = cand_pos.gather(1, order)
        self.max_value[feats] = cand_max.gather(1, order)

        # only features whose kept set changed need their per-token rows rewritten
        changed = (order >= n).any(dim=1)
        feats, order = feats[changed], order[changed]
        if feats.numel() == 0:
            return
        kept = order.clamp(max=n - 1).unsqueeze(-1).expand(-1, -1, self.length)
        rows = self.rows[feats].gather(1, kept)  # [F', n, T]
        fi, ri = (order >= n).nonzero(as_tuple=True)  # slots filled from this batch
        slot_key = feats[fi] * n_rows + (order[fi, ri] - n)
        sorted_key, perm = torch.sort(slot_key)
        token_key = (pairs.feature * n_rows + pairs.row)[pairs.token_pair]
        j = torch.searchsorted(sorted_key, token_key).clamp(max=sorted_key.numel() - 1)
        hit = sorted_key[j] == token_key  # active tokens whose (feature, context) was kept
        fresh = torch.zeros(fi.numel(), self.length, device=dev)
        fresh[perm[j[hit]], pairs.token_pos[hit]] = pairs.token_value[hit]
        rows[fi, ri] = fresh
        self.rows[feats] = rows

    def drop_and_sort_by_value(self, drop: Tensor) -> None:
        """Empty the slots where ``drop`` [d_sae, n] is true and order each feature's slots
        by max value, largest first (ties: higher score first), empty slots last."""
        self.context.masked_fill_(drop, -1)
        empty = self.context < 0
        self.max_value.masked_fill_(empty, 0)
        self.rows.masked_fill_(empty.unsqueeze(-1), 0)
        self.score.masked_fill_(empty, -math.inf)
        by_value = torch.where(empty, -math.inf, self.max_value.double())
        order = torch.sort(by_value, dim=1, descending=True, stable=True).indices
        for name in ("score", "context", "max_pos", "max_value"):
            setattr(self, name, getattr(self, name).gather(1, order))
        self.rows = self.rows.gather(1, order.unsqueeze(-1).expand_as(self.rows))

    def to_host(self) -> KeptArrays:
        """The kept slots as host arrays, values in CSR form."""
        d, n = self.context.shape
        rows = self.rows.reshape(d * n, self.length)
        nz = rows > 0
        offsets = torch.cat(
            [torch.zeros(1, dtype=torch.int64, device=nz.device), nz.sum(1).cumsum(0)]
        )
        slot, pos = nz.nonzero(as_tuple=True)  # row-major: slot-major order, as CSR needs
        return KeptArrays(
            context=self.context.cpu().numpy(),
            max_pos=self.max_pos.to(torch.int16).cpu().numpy(),
            max_value=self.max_value.masked_fill(self.context < 0, 0).cpu().numpy(),
            value_offsets=offsets.cpu().numpy(),
            value_pos=pos.to(torch.int16).cpu().numpy(),
            value=rows[slot, pos].cpu().numpy(),
        )
