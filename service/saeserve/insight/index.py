"""Build a feature index: stream a corpus through model + SAE and summarise every latent.

``build_index(lm, sae, texts)`` tokenizes the texts into contexts of ``context_length``
tokens, runs the model only up to the SAE's hook point, encodes each batch sparsely
(``Sae.encode_sparse``: a TopK SAE's k latents; the ``dense_top_k`` largest latents
per token otherwise) and folds it into a ``FeatureAccumulator`` on the model's device.
Nothing of size [tokens x d_sae] is ever built; per-feature state is
O(d_sae * ((n_top_contexts + quantile samples) * context_length + histogram grid)).

Definitions (all over indexed tokens: padding and special tokens such as BOS excluded):
- density: fraction of tokens where the feature is active (> 0);
- mean activation: the mean over the tokens where it is active, not over all tokens;
- histogram: of the active values, on log-spaced bins. Values are counted streaming on a
  fixed fine grid (``LogBins``: 0, then ``per_decade`` bins per decade from ``low`` to
  ``high``, then overflow); at the end each feature's occupied span of that grid is
  merged into at most ``histogram_bins`` bins, so edges are feature-specific, log-spaced
  and the counts exact (bins [e_i, e_i+1); the last edge is the max when it overflows);
- top contexts: the contexts with the highest per-context max activation, kept by a
  running merge (stable sort over the kept N plus this batch's candidates, per touched
  feature), with the feature's value at every token of each kept context;
- quantile samples: a uniform random sample of ``quantile_bands * samples_per_band``
  of the contexts the feature fired in (a seeded reservoir, ``kept_contexts``: the same
  seed and corpus give the same sample), less those among its top contexts, ordered by
  per-context max; ``FeatureIndex.quantiles`` splits them by rank into bands, so band j
  holds the sample between its j/B and (j+1)/B quantiles of per-context max activation;
- promoted / suppressed tokens: the largest / smallest direct logit effects of one unit
  of the feature, from ``saeserve.engine.feature_math`` (the same numbers GetFeature gives
  for an SAE without an index; ``logit_lens="plain"`` leaves the final norm out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeserve.engine.feature_math import logit_effects
from saeserve.engine.padding import pad_token_ids
from saeserve.errors import require
from saeserve.insight.explanations import attach_explanations
from saeserve.insight.kept_contexts import ContextPairs, KeptArrays, KeptContexts, sample_keys
from saeserve.insight.store import FeatureIndex, IndexMeta
from saeserve.sae.base import Sae

FEATURES_PER_CHUNK = 2**16
"""Features compared at a time when dropping samples that are also top contexts."""


@dataclass(frozen=True)
class LogBins:
    """The fixed fine grid activations are counted on: [0, low), log bins, [high, inf)."""

    low: float = 1e-3
    high: float = 1e5
    per_decade: int = 32

    @property
    def edges(self) -> Tensor:
        """[m + 1] float32 inner edges low .. high."""
        m = round(math.log10(self.high / self.low) * self.per_decade)
        exps = torch.arange(m + 1, dtype=torch.float64) / self.per_decade
        return (self.low * 10.0**exps).to(torch.float32)

    @property
    def n_fine(self) -> int:
        return int(self.edges.numel()) + 1

    @property
    def lower_edges(self) -> Tensor:
        """[n_fine + 1]: fine bin j is [lower_edges[j], lower_edges[j + 1])."""
        inf = torch.tensor([math.inf], dtype=torch.float32)
        return torch.cat([torch.zeros(1), self.edges, inf])


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


class FeatureAccumulator:
    """Streaming per-feature statistics over sparse latents, on one device."""

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
        device: torch.device | str = "cpu",
    ) -> None:
        self.d_sae, self.length = d_sae, context_length
        self.histogram_bins = histogram_bins
        self.sample_seed = sample_seed
        self.grid = grid or LogBins()
        self.device = torch.device(device)
        dev = self.device
        self.inner_edges = self.grid.edges.to(dev)
        self.counts = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.sums = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        self.maxes = torch.zeros(d_sae, dtype=torch.float32, device=dev)
        self.fine_hist = torch.zeros(d_sae, self.grid.n_fine, dtype=torch.int32, device=dev)
        self.top = KeptContexts(d_sae, n_top_contexts, context_length, dev)
        self.samples = KeptContexts(d_sae, n_samples, context_length, dev)
        self.n_tokens = 0
        self.n_contexts = 0

    def add(self, values: Tensor, indices: Tensor, rows: Tensor, pos: Tensor, n_rows: int) -> None:
        """Fold in one batch of ``n_rows`` contexts.

        values, indices: [n_tok, k] latents of the batch's indexed tokens (inactive = 0);
        rows, pos: [n_tok] each token's context (0..n_rows-1) and position in it. The
        contexts get global ids ``n_contexts .. n_contexts + n_rows - 1``.
        """
        active = values > 0  # [n_tok, k]
        f = indices[active]  # [M]
        v = values[active].to(torch.float32)
        tok = torch.arange(values.shape[0], device=values.device).unsqueeze(1).expand_as(indices)
        tok = tok[active]
        b, t = rows[tok], pos[tok]

        self.counts.index_add_(0, f, torch.ones_like(f))
        self.sums.index_add_(0, f, v.double())
        self.maxes.scatter_reduce_(0, f, v, "amax")
        fine = torch.bucketize(v, self.inner_edges, right=True)  # [M] fine-bin index
        flat_hist = self.fine_hist.view(-1)
        flat_hist.index_add_(
            0, f * self.grid.n_fine + fine, torch.ones_like(fine, dtype=torch.int32)
        )
        if f.numel():
            pairs = ContextPairs.from_tokens(f, v, b, t, n_rows, self.n_contexts, self.length)
            self.top.merge(pairs, pairs.max_value)
            if self.samples.n:
                self.samples.merge(
                    pairs, sample_keys(self.sample_seed, pairs.feature, pairs.context_id)
                )
        self.n_tokens += int(values.shape[0])
        self.n_contexts += n_rows

    def finish(self) -> AccumulatedStats:
        """Host arrays of everything accumulated (see ``FeatureIndex`` for the layout).

        Samples that are also top contexts of their feature are dropped; the rest are
        ordered by max value.
        """
        counts = self.counts
        mean = torch.where(counts > 0, self.sums / counts.clamp(min=1), 0).float()
        edges, hist_counts, n_bins = self._histograms()
        in_top = torch.zeros_like(self.samples.context, dtype=torch.bool)
        for start in range(0, self.d_sae, FEATURES_PER_CHUNK):  # [c, S, N] at a time
            sampled = self.samples.context[start : start + FEATURES_PER_CHUNK]
            top = self.top.context[start : start + FEATURES_PER_CHUNK]
            in_top[start : start + FEATURES_PER_CHUNK] = (
                sampled[:, :, None] == top[:, None, :]
            ).any(-1) & (sampled >= 0)
        self.samples.drop_and_sort_by_value(in_top)
        return AccumulatedStats(
            n_tokens=self.n_tokens,
            n_contexts=self.n_contexts,
            counts=counts.cpu().numpy(),
            max_activation=self.maxes.cpu().numpy(),
            mean_activation=mean.cpu().numpy(),
            hist_edges=edges.cpu().numpy(),
            hist_counts=hist_counts.cpu().numpy(),
            hist_n_bins=n_bins.to(torch.int32).cpu().numpy(),
            top=self.top.to_host(),
            samples=self.samples.to_host(),
        )

    def _histograms(self) -> tuple[Tensor, Tensor, Tensor]:
        """Merge each feature's occupied fine bins into <= histogram_bins log bins."""
        hist = self.fine_hist.long()  # [d, M]
        d, m = hist.shape
        bins = self.histogram_bins
        occupied = hist > 0
        alive = occupied.any(1)
        lo = occupied.int().argmax(1)  # first occupied fine bin
        hi = m - 1 - occupied.flip(1).int().argmax(1)  # last occupied fine bin
        span = hi - lo + 1
        group = (span + bins - 1) // bins  # fine bins per output bin
        n_bins = torch.where(alive, (span + group - 1) // group, 0)
        steps = torch.arange(bins + 1, device=hist.device)
        bounds = torch.minimum(lo[:, None] + steps * group[:, None], (hi + 1)[:, None])  # [d, B+1]
        cum = torch.cat(
            [torch.zeros(d, 1, dtype=torch.int64, device=hist.device), hist.cumsum(1)], 1
        )
        counts = cum.gather(1, bounds[:, 1:]) - cum.gather(1, bounds[:, :-1])  # [d, B]
        edges = self.grid.lower_edges.to(hist.device)[bounds]  # [d, B+1]
        edges = torch.where(torch.isinf(edges), self.maxes[:, None], edges)  # overflow: max
        unused = (steps[None, :] > n_bins[:, None]) | ~alive[:, None]
        edges = edges.masked_fill(unused, math.nan)
        return edges, counts, n_bins


# --- corpus ----------------------------------------------------------------------------
def iter_contexts(
    tokenizer: Any, texts: Iterable[str], context_length: int, max_tokens: int | None = None
) -> Iterator[list[int]]:
    """Token-id chunks of at most ``context_length``, each text split on its own.

    When the tokenizer starts every text with BOS, every chunk of a long text starts
    with BOS too. Stops once ``max_tokens`` tokens have been yielded (BOS included).
    """
    bos = tokenizer.bos_token_id
    budget = math.inf if max_tokens is None else max_tokens
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        lead = [ids[0]] if bos is not None and ids and ids[0] == bos else []
        body = ids[len(lead) :]
        if len(lead) >= context_length:
            lead, body = [], ids
        step = context_length - len(lead)
        for start in range(0, len(body), step):
            chunk = (lead + body[start : start + step])[: int(min(budget, context_length))]
            if not chunk:
                return
            yield chunk
            budget -= len(chunk)
            if budget <= 0:
                return


def _batches(contexts: Iterator[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    batch: list[list[int]] = []
    for ctx in contexts:
        batch.append(ctx)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- the whole build -------------------------------------------------------------------
def build_index(
    lm: Any,
    sae: Sae,
    corpus_texts: Iterable[str],
    *,
    context_length: int = 64,
    n_top_contexts: int = 20,
    n_logit_tokens: int = 10,
    histogram_bins: int = 32,
    quantile_bands: int = 3,
    samples_per_band: int = 5,
    sample_seed: int = 0,
    batch_size: int = 16,
    dense_top_k: int = 64,
    max_tokens: int | None = None,
    include_special_tokens: bool = False,
    logit_lens: str = "final_norm_gain",
    explanations: Mapping[int, str] | None = None,
    grid: LogBins | None = None,
    progress: Callable[[int], None] | None = None,
) -> FeatureIndex:
    """Index ``sae`` over ``corpus_texts`` with the model in ``lm`` (a ``LoadedModel``).

    ``dense_top_k`` caps the latents read per token of a non-TopK SAE (activity beyond
    it is not counted; at most d_sae); ``progress`` is called with the tokens indexed so
    far after each batch. The SAE is moved to the model's device. An SAE whose d_in is
    not the model's width gets no promoted/suppressed tokens (``logit_lens`` "none").
    See the module docstring for what is measured.
    """
    from saeserve.model.hookpoints import forward_until, resolve_hook_point

    max_positions = getattr(lm, "max_positions", None) or context_length
    require(
        0 < context_length <= min(max_positions, 32767),
        f"context_length: {context_length} must be in [1, {min(max_positions, 32767)}]",
    )
    require(n_top_contexts > 0, f"n_top_contexts: {n_top_contexts} must be >= 1")
    require(n_logit_tokens > 0, f"n_logit_tokens: {n_logit_tokens} must be >= 1")
    require(histogram_bins > 0, f"histogram_bins: {histogram_bins} must be >= 1")
    require(quantile_bands >= 0, f"quantile_bands: {quantile_bands} must be >= 0")
    require(samples_per_band >= 0, f"samples_per_band: {samples_per_band} must be >= 0")
    require(batch_size > 0, f"batch_size: {batch_size} must be >= 1")
    require(dense_top_k > 0, f"dense_top_k: {dense_top_k} must be >= 1")
    require(max_tokens is None or max_tokens > 0, f"max_tokens: {max_tokens} must be >= 1")
    require(
        logit_lens in ("final_norm_gain", "plain"),
        f"logit_lens: {logit_lens!r} must be 'final_norm_gain' or 'plain'",
    )

    tokenizer = lm.tokenizer
    device = torch.device(lm.device)
    sae = sae.to(device)
    hook = resolve_hook_point(sae.cfg.hook_point, lm.layout, lm.model)
    acc = FeatureAccumulator(
        sae.d_sae,
        n_top_contexts=n_top_contexts,
        context_length=context_length,
        histogram_bins=histogram_bins,
        n_samples=quantile_bands * samples_per_band,
        sample_seed=sample_seed,
        grid=grid,
        device=device,
    )
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.int64, device=device)
    k = sae.cfg.k if sae.is_topk else min(dense_top_k, sae.d_sae)
    corpus: list[np.ndarray] = []  # [B, T] token ids of every batch, for the kept contexts
    lengths: list[np.ndarray] = []

    contexts = iter_contexts(tokenizer, corpus_texts, context_length, max_tokens)
    with torch.inference_mode():
        for batch in _batches(contexts, batch_size):
            ids, mask = pad_token_ids(batch, pad_id=lm.pad_token_id, width=context_length)
            corpus.append(ids.numpy().astype(np.int32))
            lengths.append(mask.sum(1).numpy().astype(np.int16))
            ids, mask = ids.to(device), mask.to(device)
            width = max(len(c) for c in batch)
            ids, mask = ids[:, :width], mask[:, :width]

            captured: list[Tensor] = []
            forward_until(
                lm, {hook: captured.append}, stop_after=hook, input_ids=ids, attention_mask=mask
            )
            acts = captured[-1]  # [B, width, d_in]
            indexed = mask.bool()
            if not include_special_tokens:
                indexed &= ~torch.isin(ids, special)
            rows, pos = indexed.nonzero(as_tuple=True)
            enc = sae.encode_sparse(acts[rows, pos], k=k)  # [n_tok, k]
            acc.add(enc.values, enc.indices, rows, pos, len(batch))
            if progress is not None:
                progress(acc.n_tokens)

    require(acc.n_contexts > 0, "corpus: no text to index")
    stats = acc.finish()
    effects = logit_effects(
        lm, sae, n_logit_tokens, through_final_norm=logit_lens == "final_norm_gain"
    )
    if effects.promoted_ids.shape[1] == 0:  # not the residual width (e.g. MLP neurons)
        logit_lens = "none"

    meta = IndexMeta(
        sae_id=sae.cfg.id,
        hook_point=hook.name,
        model=str(getattr(lm, "name", "") or sae.cfg.model),
        d_sae=sae.d_sae,
        n_tokens=stats.n_tokens,
        n_contexts=stats.n_contexts,
        context_length=context_length,
        n_top_contexts=n_top_contexts,
        n_logit_tokens=int(effects.promoted_ids.shape[1]),
        histogram_bins=histogram_bins,
        latents_per_token=int(k or 0),
        quantile_bands=quantile_bands,
        samples_per_band=samples_per_band,
        sample_seed=sample_seed,
        logit_lens=logit_lens,
    )
    index = assemble_index(
        meta,
        stats,
        np.concatenate(corpus),
        np.concatenate(lengths),
        promoted=(effects.promoted_ids, effects.promoted),
        suppressed=(effects.suppressed_ids, effects.suppressed),
        decode=lambda token_ids: [tokenizer.decode([t]) for t in token_ids],
        vocab_size=lm.vocab_size,
    )
    attach_explanations(index, explanations)
    return index


def assemble_index(
    meta: IndexMeta,
    stats: AccumulatedStats,
    corpus_tokens: np.ndarray,
    corpus_lengths: np.ndarray,
    *,
    promoted: tuple[np.ndarray, np.ndarray],
    suppressed: tuple[np.ndarray, np.ndarray],
    decode: Callable[[list[int]], list[str]],
    vocab_size: int,
) -> FeatureIndex:
    """A ``FeatureIndex`` from accumulated stats, keeping only the referenced contexts.

    corpus_tokens [n_contexts, T] and corpus_lengths [n_contexts] are every context in
    global id order; ``decode`` maps token ids to their texts. Explanations start empty.
    """
    top, samples = stats.top, stats.samples
    used = np.unique(
        np.concatenate([top.context[top.context >= 0], samples.context[samples.context >= 0]])
    )

    def rows_of(context: np.ndarray) -> np.ndarray:  # global ids -> rows of context_tokens
        out = np.full(context.shape, -1, dtype=np.int32)
        filled = context >= 0
        out[filled] = np.searchsorted(used, context[filled])
        return out

    token_dtype = np.uint16 if vocab_size <= 65536 else np.int32
    context_tokens = corpus_tokens[used].astype(token_dtype)
    context_lengths = corpus_lengths[used].astype(np.int16)
    padding = np.arange(context_tokens.shape[1])[None, :] >= context_lengths[:, None]
    context_tokens[padding] = 0
    referenced = set(np.unique(context_tokens[~padding]).tolist())
    referenced |= set(promoted[0].ravel().tolist()) | set(suppressed[0].ravel().tolist())
    token_ids = sorted(int(t) for t in referenced)
    return FeatureIndex(
        meta=meta,
        counts=stats.counts.astype(np.int64),
        max_activation=stats.max_activation.astype(np.float32),
        mean_activation=stats.mean_activation.astype(np.float32),
        hist_edges=stats.hist_edges.astype(np.float32),
        hist_counts=stats.hist_counts.astype(np.int64),
        hist_n_bins=stats.hist_n_bins.astype(np.int32),
        top_context=rows_of(top.context),
        top_max_pos=top.max_pos.astype(np.int16),
        top_max_value=top.max_value.astype(np.float32),
        value_offsets=top.value_offsets.astype(np.int64),
        value_pos=top.value_pos.astype(np.int16),
        value=top.value.astype(np.float32),
        sample_context=rows_of(samples.context),
        sample_max_pos=samples.max_pos.astype(np.int16),
        sample_max_value=samples.max_value.astype(np.float32),
        sample_value_offsets=samples.value_offsets.astype(np.int64),
        sample_value_pos=samples.value_pos.astype(np.int16),
        sample_value=samples.value.astype(np.float32),
        context_tokens=context_tokens,
        context_lengths=context_lengths,
        promoted_ids=promoted[0].astype(np.int32),
        promoted_effects=promoted[1].astype(np.float32),
        suppressed_ids=suppressed[0].astype(np.int32),
        suppressed_effects=suppressed[1].astype(np.float32),
        token_strings=dict(zip(token_ids, decode(token_ids), strict=True)),
        explanations=[""] * meta.d_sae,
        explanation_sources=[""] * meta.d_sae,
    )
