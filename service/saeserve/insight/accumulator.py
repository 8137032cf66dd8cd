"""Streaming per-feature statistics over sparse latents, in memory proportional to what fired.

``FeatureAccumulator.add`` folds in one batch of a TopK-style encoding ([tokens, k] ids
and values); ``finish`` hands back dense per-feature host arrays (``AccumulatedStats``).
Only features that fired have state: each gets a compact row (in order of first firing;
a sorted id list maps feature ids to rows) holding its count, sum, max, its fine
histogram (``LogBins``, int32) and its kept top and sampled contexts
(``saeserve.insight.kept_contexts``). The contexts some slot still keeps are the only
corpus tokens held (int32). ``nbytes`` is what the state takes now; ``output_nbytes`` what
``finish`` and the index will add, so a caller can hold the whole build to a budget.
``state``/``restore`` make a checkpoint of it (host arrays; see ``saeserve.insight.checkpoint``).

``finish`` works through the fired features in blocks of ``FEATURES_PER_BLOCK`` and frees
the histogram state before the context slots are laid out, so its peak stays near the
state's own size plus the dense output, not a multiple of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from saeserve.insight.kept_contexts import ContextPairs, KeptArrays, KeptContexts, sample_keys

FEATURES_PER_BLOCK = 2**16
"""Fired features laid out at a time by ``finish``."""
MIN_ROWS = 1024
GROWTH = 1.5


@dataclass(frozen=True)
class LogBins:
    """The fixed fine grid activations are counted on: [0, low), log bins, [high, inf)."""

    low: float = 1e-3
    high: float = 1e5
    per_decade: int = 32

    @property
    def edges(self) -> np.ndarray:
        """[m + 1] float32 inner edges low .. high."""
        m = round(math.log10(self.high / self.low) * self.per_decade)
        exps = torch.arange(m + 1, dtype=torch.float64) / self.per_decade
        return (self.low * 10.0**exps).to(torch.float32).numpy()

    @property
    def n_fine(self) -> int:
        return int(self.edges.size) + 1

    @property
    def lower_edges(self) -> np.ndarray:
        """[n_fine + 1]: fine bin j is [lower_edges[j], lower_edges[j + 1])."""
        return np.concatenate([[0.0], self.edges, [math.inf]]).astype(np.float32)


@dataclass
class AccumulatedStats:
    """Host arrays a finished ``FeatureAccumulator`` hands to ``FeatureIndex``."""

    n_tokens: int
    n_contexts: int
    counts: np.ndarray
    max_activation: np.ndarray
    mean_activation: np.ndarray
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    hist_n_bins: np.ndarray
    top: KeptArrays
    """The top contexts, strongest first; context ids in order of ``add`` calls."""
    samples: KeptArrays
    """The sampled contexts outside the top ones, largest max value first."""
    context_ids: np.ndarray
    """[C] int64 sorted global ids of the contexts the slots keep."""
    context_tokens: np.ndarray
    """[C, T] int32 their token ids, 0 past the length."""
    context_lengths: np.ndarray
    """[C] int16."""


def merge_histograms(
    fine: np.ndarray, maxes: np.ndarray, bins: int, lower_edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge each row's occupied fine bins [R, M] into <= ``bins`` log bins.

    Returns edges [R, bins + 1] float32 (NaN past the last; an overflow bin ends at the
    row's max), counts [R, bins] int64 and bins used [R].
    """
    hist = fine.astype(np.int64)
    r, m = hist.shape
    occupied = hist > 0
    alive: np.ndarray = np.asarray(occupied.any(1))
    lo = occupied.argmax(1)  # first occupied fine bin
    hi = m - 1 - occupied[:, ::-1].argmax(1)  # last occupied fine bin
    span = hi - lo + 1
    group = (span + bins - 1) // bins  # fine bins per output bin
    n_bins = np.where(alive, (span + group - 1) // group, 0)
    steps = np.arange(bins + 1)
    bounds = np.minimum(lo[:, None] + steps * group[:, None], (hi + 1)[:, None])  # [R, B+1]
    cum = np.concatenate([np.zeros((r, 1), dtype=np.int64), hist.cumsum(1)], 1)
    counts = np.take_along_axis(cum, bounds[:, 1:], 1) - np.take_along_axis(cum, bounds[:, :-1], 1)
    edges = lower_edges[bounds]
    edges = np.where(np.isinf(edges), maxes[:, None], edges).astype(np.float32)
    edges[(steps[None, :] > n_bins[:, None]) | ~alive[:, None]] = np.nan
    return edges, counts, n_bins


class FeatureAccumulator:
    """Streaming per-feature statistics over sparse latents (see the module docstring)."""

    ROW_ARRAYS = ("feature_of_row", "counts", "sums", "maxes", "fine_hist")

    def __init__(
        self,
        d_sae: int,
        *,
        n_top_contexts: int,
        context_length: int,
        histogram_bins: int,
        n_samples: int = 0,
        sample_seed: int = 0,
        grid: LogBins | None = None,
    ) -> None:
        self.d_sae, self.length = d_sae, context_length
        self.histogram_bins = histogram_bins
        self.sample_seed = sample_seed
        self.grid = grid or LogBins()
        self.inner_edges = self.grid.edges
        self.n_fired = 0
        self.fired_ids = np.zeros(0, dtype=np.int64)  # sorted ids of the fired features
        self.fired_rows = np.zeros(0, dtype=np.int64)  # their rows
        self.feature_of_row = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros(0, dtype=np.float64)
        self.maxes = np.zeros(0, dtype=np.float32)
        self.fine_hist = np.zeros((0, self.grid.n_fine), dtype=np.int32)
        self.top = KeptContexts(n_top_contexts, keyed=False)
        self.samples = KeptContexts(n_samples, keyed=True)
        self.context_ids = np.zeros(0, dtype=np.int64)  # kept contexts, sorted
        self.context_tokens = np.zeros((0, context_length), dtype=np.int32)
        self.context_lengths = np.zeros(0, dtype=np.int16)
        self.n_kept_contexts = 0
        self.n_tokens = 0
        self.n_contexts = 0

    # --- memory ------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the state holds now (capacity, not just what is filled)."""
        arrays = [getattr(self, a) for a in self.ROW_ARRAYS]
        arrays += [self.fired_ids, self.fired_rows, self.context_ids]
        arrays += [self.context_tokens, self.context_lengths]
        return sum(a.nbytes for a in arrays) + self.top.nbytes + self.samples.nbytes

    def output_nbytes(self, n_logit_tokens: int = 0) -> int:
        """Bytes ``finish`` and the index built from it hold beside the state: the dense
        per-feature arrays and the kept values (an upper bound)."""
        n_slots = self.top.n + self.samples.n
        per_feature = 8 + 4 + 4 + 4 * (self.histogram_bins + 1) + 8 * self.histogram_bins + 4
        per_feature += n_slots * (8 + 4 + 2 + 4 + 8) + n_logit_tokens * 2 * (4 + 4)
        kept = self.top.pool_used + self.samples.pool_used
        return self.d_sae * per_feature + 2 * 6 * kept + self.context_tokens.nbytes

    def compact(self) -> None:
        """Drop replaced runs from the value pools and contexts no slot keeps any more."""
        self.top.compact()
        self.samples.compact()
        self._drop_unreferenced_contexts()

    # --- streaming ---------------------------------------------------------------------
    def add(
        self,
        values: np.ndarray,
        indices: np.ndarray,
        rows: np.ndarray,
        pos: np.ndarray,
        n_rows: int,
        context_tokens: np.ndarray | None = None,
        context_lengths: np.ndarray | None = None,
    ) -> None:
        """Fold in one batch of ``n_rows`` contexts.

        values, indices: [n_tok, k] latents of the batch's indexed tokens (inactive = 0);
        rows, pos: [n_tok] each token's context (0..n_rows-1) and position in it. The
        contexts get global ids ``n_contexts .. n_contexts + n_rows - 1``. With
        ``context_tokens`` [n_rows, T] int32 and ``context_lengths`` [n_rows], the token
        ids of the contexts the slots keep are kept too.
        """
        values, indices = np.asarray(values), np.asarray(indices)
        rows, pos = np.asarray(rows, dtype=np.int64), np.asarray(pos, dtype=np.int64)
        active = values > 0  # [n_tok, k]
        f = indices[active].astype(np.int64)  # [M], token-major
        v = values[active].astype(np.float32)
        tok = np.nonzero(active)[0]
        if f.size:
            touched = self._add_active(f, v, rows[tok], pos[tok], n_rows)
            if context_tokens is not None and context_lengths is not None:
                self._keep_contexts(touched, context_tokens, context_lengths)
        self.n_tokens += int(values.shape[0])
        self.n_contexts += n_rows

    def _add_active(
        self, f: np.ndarray, v: np.ndarray, b: np.ndarray, t: np.ndarray, n_rows: int
    ) -> np.ndarray:
        """Fold in active tokens (feature, value, context row, position); the rows touched."""
        features, tok_inv = np.unique(f, return_inverse=True)
        feat_rows = self._rows_for(features)
        token_rows = feat_rows[tok_inv]
        self.counts[feat_rows] += np.bincount(tok_inv, minlength=features.size)
        self.sums[feat_rows] += np.bincount(
            tok_inv, weights=v.astype(np.float64), minlength=features.size
        )
        fine = np.searchsorted(self.inner_edges, v, side="right")  # [M] fine-bin index
        cells, n_in = np.unique(token_rows * self.grid.n_fine + fine, return_counts=True)
        self.fine_hist.reshape(-1)[cells] += n_in.astype(np.int32)

        pairs = ContextPairs.from_tokens(f, v, b, t, n_rows, self.n_contexts)
        pair_rows = feat_rows[np.searchsorted(features, pairs.feature)]
        np.maximum.at(self.maxes, pair_rows, pairs.max_value)
        self.top.merge(pairs, pair_rows, pairs.max_value.astype(np.float64))
        if self.samples.n:
            keys = sample_keys(self.sample_seed, pairs.feature, pairs.context_id)
            self.samples.merge(pairs, pair_rows, keys)
        return feat_rows

    def _rows_for(self, features: np.ndarray) -> np.ndarray:
        """Compact rows of sorted unique ``features``, new rows for first firings."""
        at = np.searchsorted(self.fired_ids, features)
        found = at < self.fired_ids.size
        found[found] = self.fired_ids[at[found]] == features[found]
        new = features[~found]
        if new.size:
            rows = np.arange(self.n_fired, self.n_fired + new.size)
            self._ensure_rows(self.n_fired + new.size)
            self.feature_of_row[rows] = new
            self.fired_ids = np.insert(self.fired_ids, at[~found], new)
            self.fired_rows = np.insert(self.fired_rows, at[~found], rows)
            self.n_fired += new.size
        return self.fired_rows[np.searchsorted(self.fired_ids, features)]

    def _ensure_rows(self, n: int) -> None:
        capacity = self.counts.shape[0]
        if n <= capacity:
            return
        capacity = min(self.d_sae, max(n, MIN_ROWS, int(capacity * GROWTH)))
        for name in self.ROW_ARRAYS:
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.top.resize(capacity)
        self.samples.resize(capacity)

    def _keep_contexts(self, touched: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Keep the token ids of this batch's contexts that a slot of ``touched`` now holds."""
        first = self.n_contexts
        held = [self.top.context[touched], self.samples.context[touched]]
        mine = np.unique(np.concatenate([c[c >= first].ravel() for c in held]))
        if mine.size == 0:
            return
        if self.n_kept_contexts + mine.size > self.context_ids.size:
            self._drop_unreferenced_contexts(extra=mine.size)
        lo, hi = self.n_kept_contexts, self.n_kept_contexts + mine.size
        self.context_ids[lo:hi] = mine
        self.context_tokens[lo:hi] = tokens[mine - first]
        self.context_lengths[lo:hi] = lengths[mine - first]
        self.n_kept_contexts = hi

    def _drop_unreferenced_contexts(self, extra: int = 0) -> None:
        n = self.n_kept_contexts
        held = (self.top.context, self.samples.context)
        used = np.zeros(max([self.n_contexts] + [int(c.max(initial=0)) for c in held]) + 1, bool)
        for c in held:
            used[c[c >= 0]] = True
        keep = used[self.context_ids[:n]]
        live = int(keep.sum())
        capacity = max(2 * (live + extra), 64)
        ids = np.zeros(capacity, dtype=np.int64)
        tokens = np.zeros((capacity, self.length), dtype=np.int32)
        lengths = np.zeros(capacity, dtype=np.int16)
        ids[:live] = self.context_ids[:n][keep]
        tokens[:live] = self.context_tokens[:n][keep]
        lengths[:live] = self.context_lengths[:n][keep]
        self.context_ids, self.context_tokens, self.context_lengths = ids, tokens, lengths
        self.n_kept_contexts = live

    # --- the end -----------------------------------------------------------------------
    def finish(self) -> AccumulatedStats:
        """Dense host arrays of everything accumulated (see ``FeatureIndex`` for the
        layout). Samples that are also top contexts of their feature are dropped; the
        rest are ordered by max value. The accumulator is spent afterwards."""
        d, bins = self.d_sae, self.histogram_bins
        rows = self.fired_rows  # in feature order
        feats = self.fired_ids
        counts = np.zeros(d, dtype=np.int64)
        counts[feats] = self.counts[rows]
        max_activation = np.zeros(d, dtype=np.float32)
        max_activation[feats] = self.maxes[rows]
        mean = np.zeros(d, dtype=np.float32)
        mean[feats] = (self.sums[rows] / self.counts[rows]).astype(np.float32)
        hist_edges = np.full((d, bins + 1), np.nan, dtype=np.float32)
        hist_counts = np.zeros((d, bins), dtype=np.int64)
        hist_n_bins = np.zeros(d, dtype=np.int32)
        lower = self.grid.lower_edges
        for lo in range(0, rows.size, FEATURES_PER_BLOCK):
            r, f = rows[lo : lo + FEATURES_PER_BLOCK], feats[lo : lo + FEATURES_PER_BLOCK]
            edges, hc, nb = merge_histograms(self.fine_hist[r], self.maxes[r], bins, lower)
            hist_edges[f], hist_counts[f], hist_n_bins[f] = edges, hc, nb
        self.fine_hist = np.zeros((0, self.grid.n_fine), dtype=np.int32)  # spent

        top = self._dense_slots(self.top, rows, feats, None)
        samples = self._dense_slots(self.samples, rows, feats, top.context)
        self._drop_unreferenced_contexts()
        n = self.n_kept_contexts
        return AccumulatedStats(
            n_tokens=self.n_tokens,
            n_contexts=self.n_contexts,
            counts=counts,
            max_activation=max_activation,
            mean_activation=mean,
            hist_edges=hist_edges,
            hist_counts=hist_counts,
            hist_n_bins=hist_n_bins,
            top=top,
            samples=samples,
            context_ids=self.context_ids[:n],
            context_tokens=self.context_tokens[:n],
            context_lengths=self.context_lengths[:n],
        )

    def _dense_slots(
        self,
        kept: KeptContexts,
        rows: np.ndarray,
        feats: np.ndarray,
        top_context: np.ndarray | None,
    ) -> KeptArrays:
        """[d_sae, n] slots of one family, laid out block by block of fired features; with
        ``top_context`` [d_sae, N] given, slots that hold a top context are dropped."""
        d, n = self.d_sae, kept.n
        context = np.full((d, n), -1, dtype=np.int64)
        max_pos = np.zeros((d, n), dtype=np.int16)
        max_value = np.zeros((d, n), dtype=np.float32)
        lengths = np.zeros((d, n), dtype=np.int64)
        positions: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for lo in range(0, rows.size if n else 0, FEATURES_PER_BLOCK):
            r, f = rows[lo : lo + FEATURES_PER_BLOCK], feats[lo : lo + FEATURES_PER_BLOCK]
            drop = None
            if top_context is not None:
                sampled, top = kept.context[r], top_context[f]  # [R, S], [R, N]
                drop = (sampled[:, :, None] == top[:, None, :]).any(-1) & (sampled >= 0)
            block = kept.to_host(r, drop)
            context[f], max_pos[f], max_value[f] = block.context, block.max_pos, block.max_value
            lengths[f] = np.diff(block.value_offsets).reshape(-1, n)
            positions.append(block.value_pos)
            values.append(block.value)
        kept.pool_pos, kept.pool_value = np.zeros(0, np.int16), np.zeros(0, np.float32)  # spent
        return KeptArrays(
            context=context,
            max_pos=max_pos,
            max_value=max_value,
            value_offsets=np.concatenate([[0], np.cumsum(lengths.ravel())]).astype(np.int64),
            value_pos=np.concatenate(positions) if positions else np.zeros(0, np.int16),
            value=np.concatenate(values) if values else np.zeros(0, np.float32),
        )

    # --- checkpoints -------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The whole state as host arrays (compacted first)."""
        self.compact()
        n, c = self.n_fired, self.n_kept_contexts
        out = {name: getattr(self, name)[:n] for name in self.ROW_ARRAYS}
        out |= {"fired_ids": self.fired_ids, "fired_rows": self.fired_rows}
        out |= {
            "context_ids": self.context_ids[:c],
            "context_tokens": self.context_tokens[:c],
            "context_lengths": self.context_lengths[:c],
            "n_tokens": np.array([self.n_tokens], dtype=np.int64),
            "n_contexts": np.array([self.n_contexts], dtype=np.int64),
        }
        for prefix, kept in (("top", self.top), ("samples", self.samples)):
            sliced = {k: v[:n] if v.ndim == 2 else v for k, v in kept.state(prefix).items()}
            out |= sliced
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from ``state()``'s arrays."""
        for name in self.ROW_ARRAYS:
            setattr(self, name, arrays[name])
        self.fired_ids, self.fired_rows = arrays["fired_ids"], arrays["fired_rows"]
        self.n_fired = int(self.fired_ids.size)
        self.context_ids = arrays["context_ids"]
        self.context_tokens = arrays["context_tokens"]
        self.context_lengths = arrays["context_lengths"]
        self.n_kept_contexts = int(self.context_ids.size)
        self.n_tokens = int(arrays["n_tokens"][0])
        self.n_contexts = int(arrays["n_contexts"][0])
        self.top.restore("top", arrays)
        self.samples.restore("samples", arrays)
