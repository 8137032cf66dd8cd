"""Per-feature context slots kept while an index streams: the top contexts and the samples.

A ``KeptContexts`` holds, for every feature that fired, the ``n`` contexts with the
highest score seen so far, each with its max position, max value and the feature's
non-zero values in that context. The feature index keeps two: one scored by the
context's max activation (the top contexts) and one scored by ``sample_keys``, a seeded
hash of (feature, context), which makes it a uniform random sample of the contexts the
feature fired in (bottom-k sampling: each pair gets an independent uniform key, the n
largest keys win). The keys depend only on the seed and the ids, never on batch order
or device, so a build is reproducible.

Memory is proportional to what is kept: slot metadata per fired feature (rows are the
accumulator's compact rows, not feature ids) and the kept values as (position, value)
runs in one append-only pool, compacted when more than half of it is replaced runs.
A (token, feature) activation is kept at most once per family, so the live pool is at
most ``k * tokens`` entries whatever d_sae is.

``ContextPairs`` is one batch's (feature, context) pairs, computed once and merged into
both. Everything is numpy on the host: a batch's latents are small ([tokens, k]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
NO_SCORE = -np.inf


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (arithmetic mod 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, features: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """[P] float64 uniform keys in [0, 1) of (feature, global context id) pairs.

    ``mix(mix(seed + feature * G) + context * G)`` over unsigned 64-bit integers (G the
    golden-ratio constant, mix splitmix64's finalizer), top 53 bits divided by 2**53.
    """
    with np.errstate(over="ignore"):
        f = np.asarray(features).astype(np.uint64)
        c = np.asarray(contexts).astype(np.uint64)
        x = _mix(f * _GOLDEN + np.uint64(seed % (1 << 64)))
        x = _mix(x + c * _GOLDEN)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class ContextPairs:
    """One batch's (feature, context) pairs and the active tokens they come from."""

    n_rows: int
    """Contexts in the batch."""
    first_id: int
    """Global id of the batch's first context."""
    token_pair: np.ndarray
    """[M] int64: each active token's pair, tokens sorted by (pair, position)."""
    token_pos: np.ndarray
    """[M] int16: each active token's position in its context."""
    token_value: np.ndarray
    """[M] float32: each active token's activation."""
    feature: np.ndarray
    """[P] int64, pairs sorted by (feature, context row)."""
    row: np.ndarray
    """[P] int64: the context's row in the batch."""
    max_value: np.ndarray
    """[P] float32: the feature's max over the context."""
    max_pos: np.ndarray
    """[P] int16: first position of that max."""

    @classmethod
    def from_tokens(
        cls, f: np.ndarray, v: np.ndarray, b: np.ndarray, t: np.ndarray, n_rows: int, first_id: int
    ) -> ContextPairs:
        """Pairs of active tokens (feature f, value v, context row b, position t)."""
        key = f.astype(np.int64) * n_rows + b
        order = np.lexsort((t, key))  # by pair, then position
        key, t, v = key[order], t[order].astype(np.int16), v[order]
        uniq, inv = np.unique(key, return_inverse=True)
        best = np.lexsort((t, -v, inv))  # per pair: largest value, then earliest position
        starts = np.flatnonzero(np.r_[True, inv[best][1:] != inv[best][:-1]])
        return cls(
            n_rows=n_rows,
            first_id=first_id,
            token_pair=inv.astype(np.int64),
            token_pos=t,
            token_value=v,
            feature=uniq // n_rows,
            row=uniq % n_rows,
            max_value=v[best[starts]],
            max_pos=t[best[starts]],
        )

    @property
    def context_id(self) -> np.ndarray:
        """[P] global context ids."""
        return self.first_id + self.row


@dataclass
class KeptArrays:
    """Host arrays of kept slots for a set of features; slot s = i * n + rank."""

    context: np.ndarray
    """[F, n] int64 global context ids, -1 for an empty slot."""
    max_pos: np.ndarray
    """[F, n] int16."""
    max_value: np.ndarray
    """[F, n] float32, 0 for an empty slot."""
    value_offsets: np.ndarray
    """[F * n + 1] int64 CSR row pointers of the slots' non-zero values."""
    value_pos: np.ndarray
    """[nnz] int16 positions."""
    value: np.ndarray
    """[nnz] float32 activations."""


def _grown(arr: np.ndarray, rows: int, fill: float | int) -> np.ndarray:
    out = np.full((rows, *arr.shape[1:]), fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


class KeptContexts:
    """For each compact feature row, the n highest-scoring contexts (higher score first).

    ``keyed`` keeps each slot's score (the sample keys); otherwise the score is the max
    value itself (the top contexts).
    """

    ARRAYS = ("context", "max_pos", "max_value", "start", "length", "score")

    def __init__(self, n: int, *, keyed: bool) -> None:
        self.n, self.keyed = n, keyed
        self.context = np.full((0, n), -1, dtype=np.int64)
        self.max_pos = np.zeros((0, n), dtype=np.int16)
        self.max_value = np.zeros((0, n), dtype=np.float32)
        self.start = np.zeros((0, n), dtype=np.int64)  # run start in the pool
        self.length = np.zeros((0, n), dtype=np.int16)  # run length (non-zero positions)
        self.score = np.full((0, n if keyed else 0), NO_SCORE)
        self.pool_pos = np.zeros(0, dtype=np.int16)
        self.pool_value = np.zeros(0, dtype=np.float32)
        self.pool_used = 0

    @property
    def nbytes(self) -> int:
        arrays = [getattr(self, a) for a in self.ARRAYS] + [self.pool_pos, self.pool_value]
        return sum(a.nbytes for a in arrays)

    def resize(self, rows: int) -> None:
        """Room for ``rows`` feature rows (new rows empty)."""
        for name, fill in zip(self.ARRAYS, (-1, 0, 0, 0, 0, NO_SCORE), strict=True):
            setattr(self, name, _grown(getattr(self, name), rows, fill))

    def slot_scores(self, rows: np.ndarray) -> np.ndarray:
        """[R, n] float64 scores of the kept slots of ``rows`` (-inf when empty)."""
        if self.keyed:
            return self.score[rows]
        return np.where(self.context[rows] >= 0, self.max_value[rows].astype(np.float64), NO_SCORE)

    def _last_score(self, rows: np.ndarray) -> np.ndarray:
        """[R] float64 score of the n-th kept slot of ``rows`` (-inf while not full)."""
        if self.keyed:
            return self.score[rows, self.n - 1]
        last = self.max_value[rows, self.n - 1].astype(np.float64)
        return np.where(self.context[rows, self.n - 1] >= 0, last, NO_SCORE)

    def merge(self, pairs: ContextPairs, pair_rows: np.ndarray, score: np.ndarray) -> None:
        """Merge the batch's pairs (their compact rows ``pair_rows`` [P]), scored by
        ``score`` [P], into the kept slots."""
        n, n_rows = self.n, pairs.n_rows
        if n == 0 or pair_rows.size == 0:
            return
        # a pair enters only above the feature's n-th kept score (ties keep the earlier
        # context): after the first batches most pairs stop here, and rows untouched
        enter = np.flatnonzero(score > self._last_score(pair_rows))
        if enter.size == 0:
            return
        rows, finv = np.unique(pair_rows[enter], return_inverse=True)  # touched rows [F]
        width = n + n_rows
        cand_score = np.full((rows.size, width), NO_SCORE)
        cand_score[:, :n] = self.slot_scores(rows)
        cand_score[finv, n + pairs.row[enter]] = score[enter]
        cand_pair = np.full((rows.size, width), -1, dtype=np.int64)
        cand_pair[finv, n + pairs.row[enter]] = enter

        # stable: among equal scores the earlier context (already kept) stays first
        order = np.argsort(-cand_score, axis=1, kind="stable")[:, :n]
        kept_score = np.take_along_axis(cand_score, order, 1)
        empty = kept_score == NO_SCORE
        from_batch = (order >= n) & ~empty
        old = np.minimum(order, n - 1)
        pair = np.where(from_batch, np.take_along_axis(cand_pair, order, 1), 0)
        ctx = np.where(
            from_batch, pairs.context_id[pair], np.take_along_axis(self.context[rows], old, 1)
        )
        self.context[rows] = np.where(empty, -1, ctx)
        self.max_pos[rows] = np.where(
            from_batch, pairs.max_pos[pair], np.take_along_axis(self.max_pos[rows], old, 1)
        )
        self.max_value[rows] = np.where(
            from_batch, pairs.max_value[pair], np.take_along_axis(self.max_value[rows], old, 1)
        )
        if self.keyed:
            self.score[rows] = kept_score
        start, length = self._append_runs(pairs, pair[from_batch])
        new_start = np.take_along_axis(self.start[rows], old, 1)
        new_length = np.take_along_axis(self.length[rows], old, 1)
        new_start[from_batch], new_length[from_batch] = start, length
        new_length[empty] = 0
        self.start[rows], self.length[rows] = new_start, new_length

    def _append_runs(
        self, pairs: ContextPairs, chosen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Append the active tokens of the ``chosen`` pairs to the pool; their runs."""
        per_pair = np.bincount(pairs.token_pair, minlength=pairs.feature.size)
        take = np.zeros(pairs.feature.size, dtype=bool)
        take[chosen] = True
        tokens = take[pairs.token_pair]  # tokens sorted by (pair, position): runs contiguous
        m = int(tokens.sum())
        if self.pool_used + m > self.pool_pos.size:
            self.compact(extra=m)
        lo = self.pool_used
        self.pool_pos[lo : lo + m] = pairs.token_pos[tokens]
        self.pool_value[lo : lo + m] = pairs.token_value[tokens]
        self.pool_used += m
        run_start = lo + np.cumsum(np.where(take, per_pair, 0)) - per_pair  # [P]
        return run_start[chosen], per_pair[chosen].astype(np.int16)

    def compact(self, extra: int = 0) -> None:
        """Rewrite the pool with only the live runs, with room for ``extra`` more."""
        live = self.length > 0
        lengths = self.length[live].astype(np.int64)
        total = int(lengths.sum())
        src = np.repeat(self.start[live] - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        capacity = max(2 * (total + extra), 1024)
        pos = np.zeros(capacity, dtype=np.int16)
        value = np.zeros(capacity, dtype=np.float32)
        pos[:total] = self.pool_pos[src]
        value[:total] = self.pool_value[src]
        self.start[live] = np.cumsum(lengths) - lengths
        self.pool_pos, self.pool_value, self.pool_used = pos, value, total

    def to_host(self, rows: np.ndarray, drop: np.ndarray | None = None) -> KeptArrays:
        """The slots of ``rows``, less those where ``drop`` [R, n] is true, as host arrays.

        With ``drop`` given the remaining slots are ordered by max value, largest first
        (ties: higher score first), empty slots last.
        """
        context = self.context[rows]
        max_pos, max_value = self.max_pos[rows], self.max_value[rows]
        start, length = self.start[rows], self.length[rows].astype(np.int64)
        if drop is not None:
            context = np.where(drop, -1, context)
            by_value = np.where(context < 0, NO_SCORE, max_value.astype(np.float64))
            order = np.argsort(-by_value, axis=1, kind="stable")
            context, max_pos, max_value, start, length = (
                np.take_along_axis(a, order, 1)
                for a in (context, max_pos, max_value, start, length)
            )
        empty = context < 0
        length = np.where(empty, 0, length).ravel()
        offsets = np.r_[0, np.cumsum(length)]
        src = np.repeat(start.ravel() - offsets[:-1], length) + np.arange(offsets[-1])
        return KeptArrays(
            context=context,
            max_pos=np.where(empty, 0, max_pos).astype(np.int16),
            max_value=np.where(empty, 0, max_value).astype(np.float32),
            value_offsets=offsets.astype(np.int64),
            value_pos=self.pool_pos[src],
            value=self.pool_value[src],
        )

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays to checkpoint (after ``compact``), keyed ``prefix.name``."""
        self.compact()
        out = {f"{prefix}.{a}": getattr(self, a) for a in self.ARRAYS}
        out[f"{prefix}.pool_pos"] = self.pool_pos[: self.pool_used]
        out[f"{prefix}.pool_value"] = self.pool_value[: self.pool_used]
        return out

    def restore(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        for a in self.ARRAYS:
            setattr(self, a, arrays[f"{prefix}.{a}"])
        self.pool_pos = arrays[f"{prefix}.pool_pos"]
        self.pool_value = arrays[f"{prefix}.pool_value"]
        self.pool_used = int(self.pool_pos.size)
