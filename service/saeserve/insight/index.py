"""Build a feature index: stream a corpus through model + SAE and summarise every latent.

``build_index(lm, sae, texts)`` tokenizes the texts into contexts of ``context_length``
tokens, runs the model only up to the SAE's hook point, encodes each batch sparsely
(``Sae.encode_sparse``: a TopK SAE's k latents; the ``dense_top_k`` largest latents
per token otherwise) and folds it into a ``FeatureAccumulator`` on the host.
Nothing of size [tokens x d_sae] is ever built, and only features that fired have state
(``saeserve.insight.accumulator``): about 2 KB per fired feature at the defaults (the
bench row ``index_build_1m`` prints the state and the features fired) plus
6 bytes per kept (token, feature) value. ``memory_budget`` bounds that state plus the
finished index's arrays: the build stops with a ``ResourceExhausted`` naming the budget
rather than exhaust memory. With ``checkpoint`` set the state is written there every
``checkpoint_every`` corpus tokens, and ``resume`` continues from it to the same index
(``saeserve.insight.checkpoint``). The search postings are built with the index.

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

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeserve.engine.feature_math import logit_effects
from saeserve.engine.padding import pad_token_ids
from saeserve.errors import ResourceExhausted, require
from saeserve.insight.accumulator import AccumulatedStats, FeatureAccumulator, LogBins
from saeserve.insight.checkpoint import load_checkpoint, save_checkpoint
from saeserve.insight.explanations import attach_explanations
from saeserve.insight.search import postings
from saeserve.insight.store import FeatureIndex, IndexMeta
from saeserve.sae.base import Sae

GIB = 2**30
DEFAULT_MEMORY_BUDGET = 5 * GIB
"""Default bound on the accumulator's state plus the finished index's arrays."""


@dataclass(frozen=True)
class BuildProgress:
    """Where a build stands, as handed to ``build_index``'s ``progress`` after each batch."""

    corpus_tokens: int
    """Corpus tokens read so far (BOS included, as ``max_tokens`` counts), resumed ones too."""
    resumed_tokens: int
    """Corpus tokens a resumed checkpoint had already done."""
    fired: int
    """Features that fired so far."""
    state_bytes: int
    """Bytes the accumulator holds now."""


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
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    checkpoint: Path | None = None,
    checkpoint_every: int = 1_000_000,
    resume: bool = False,
    progress: Callable[[BuildProgress], None] | None = None,
) -> FeatureIndex:
    """Index ``sae`` over ``corpus_texts`` with the model in ``lm`` (a ``LoadedModel``).

    ``dense_top_k`` caps the latents read per token of a non-TopK SAE (activity beyond
    it is not counted; at most d_sae); ``progress`` is called after each batch. The SAE
    is moved to the model's device. An SAE whose d_in is not the model's width gets no
    promoted/suppressed tokens (``logit_lens`` "none"). ``memory_budget`` (bytes),
    ``checkpoint``, ``checkpoint_every`` (corpus tokens) and ``resume``: see the module
    docstring. See the module docstring for what is measured.
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
    require(checkpoint_every > 0, f"checkpoint_every: {checkpoint_every} must be >= 1")
    require(
        logit_lens in ("final_norm_gain", "plain"),
        f"logit_lens: {logit_lens!r} must be 'final_norm_gain' or 'plain'",
    )

    tokenizer = lm.tokenizer
    device = torch.device(lm.device)
    sae = sae.to(device)
    hook = resolve_hook_point(sae.cfg.hook_point, lm.layout, lm.model)
    grid = grid or LogBins()
    acc = FeatureAccumulator(
        sae.d_sae,
        n_top_contexts=n_top_contexts,
        context_length=context_length,
        histogram_bins=histogram_bins,
        n_samples=quantile_bands * samples_per_band,
        sample_seed=sample_seed,
        grid=grid,
    )
    _check_budget(acc, n_logit_tokens, memory_budget, compact=False)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.int64, device=device)
    k = sae.cfg.k if sae.is_topk else min(dense_top_k, sae.d_sae)
    settings = {
        "sae_id": sae.cfg.id,
        "d_sae": sae.d_sae,
        "hook_point": hook.name,
        "context_length": context_length,
        "n_top_contexts": n_top_contexts,
        "histogram_bins": histogram_bins,
        "quantile_bands": quantile_bands,
        "samples_per_band": samples_per_band,
        "sample_seed": sample_seed,
        "batch_size": batch_size,
        "latents_per_token": int(k or 0),
        "max_tokens": max_tokens,
        "include_special_tokens": include_special_tokens,
        "grid": [grid.low, grid.high, grid.per_decade],
    }

    contexts = iter_contexts(tokenizer, corpus_texts, context_length, max_tokens)
    corpus_tokens = resumed_tokens = 0
    saved = load_checkpoint(checkpoint, settings) if resume and checkpoint else None
    if saved is not None:
        acc.restore(saved.arrays)
        corpus_tokens = resumed_tokens = saved.corpus_tokens
        skipped = sum(1 for _ in itertools.islice(contexts, saved.n_contexts))
        require(
            skipped == saved.n_contexts,
            f"resume: the corpus has {skipped} contexts, the checkpoint {saved.n_contexts}",
        )
    next_checkpoint = corpus_tokens + checkpoint_every
    with torch.inference_mode():
        for batch in _batches(contexts, batch_size):
            ids, mask = pad_token_ids(batch, pad_id=lm.pad_token_id, width=context_length)
            host_ids = ids.numpy().astype(np.int32) * mask.numpy()  # [B, T], 0-padded
            host_lengths = mask.sum(1).numpy().astype(np.int16)
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
            acc.add(
                enc.values.float().cpu().numpy(),
                enc.indices.cpu().numpy(),
                rows.cpu().numpy(),
                pos.cpu().numpy(),
                len(batch),
                host_ids,
                host_lengths,
            )
            corpus_tokens += int(host_lengths.sum())
            _check_budget(acc, n_logit_tokens, memory_budget, compact=True)
            if checkpoint is not None and corpus_tokens >= next_checkpoint:
                save_checkpoint(
                    checkpoint,
                    settings,
                    acc.state(),
                    n_contexts=acc.n_contexts,
                    corpus_tokens=corpus_tokens,
                )
                next_checkpoint = corpus_tokens + checkpoint_every
            if progress is not None:
                progress(BuildProgress(corpus_tokens, resumed_tokens, acc.n_fired, acc.nbytes))

    require(acc.n_contexts > 0, "corpus: no text to index")
    stats = acc.finish()
    del acc
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
        promoted=(effects.promoted_ids, effects.promoted),
        suppressed=(effects.suppressed_ids, effects.suppressed),
        decode=lambda token_ids: [tokenizer.decode([t]) for t in token_ids],
        vocab_size=lm.vocab_size,
    )
    attach_explanations(index, explanations)
    postings(index)  # built now, stored with the index: no build on a first search
    return index


def _check_budget(acc: FeatureAccumulator, n_logit: int, budget: int, *, compact: bool) -> None:
    """Raise ResourceExhausted when the state plus the finished index would pass ``budget``."""
    need = acc.nbytes + acc.output_nbytes(n_logit)
    if need > budget and compact:
        acc.compact()
        need = acc.nbytes + acc.output_nbytes(n_logit)
    if need > budget:
        raise ResourceExhausted(
            f"memory_budget: the index of {acc.d_sae} features needs {need / GIB:.2f} GiB "
            f"after {acc.n_tokens} tokens ({acc.n_fired} features fired), over the budget "
            f"{budget / GIB:.2f} GiB (--memory-budget); raise it, or keep less per feature "
            "(--top-contexts, --quantile-bands, --samples-per-band, --context-length, "
            "--histogram-bins); with --checkpoint, --resume continues from the last one",
            reason="memory_budget",
        )


def assemble_index(
    meta: IndexMeta,
    stats: AccumulatedStats,
    *,
    promoted: tuple[np.ndarray, np.ndarray],
    suppressed: tuple[np.ndarray, np.ndarray],
    decode: Callable[[list[int]], list[str]],
    vocab_size: int,
) -> FeatureIndex:
    """A ``FeatureIndex`` from accumulated stats, keeping only the referenced contexts.

    ``decode`` maps token ids to their texts. Explanations start empty.
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
    held = np.searchsorted(stats.context_ids, used)  # every used context is held
    context_tokens = stats.context_tokens[held].astype(token_dtype)
    context_lengths = stats.context_lengths[held].astype(np.int16)
    padding = np.arange(context_tokens.shape[1])[None, :] >= context_lengths[:, None]
    context_tokens[padding] = 0
    referenced = set(np.unique(context_tokens[~padding]).tolist())
    referenced |= set(promoted[0].ravel().tolist()) | set(suppressed[0].ravel().tolist())
    token_ids = sorted(int(t) for t in referenced)
    return FeatureIndex(
        meta=meta,
        counts=stats.counts.astype(np.int64, copy=False),
        max_activation=stats.max_activation.astype(np.float32, copy=False),
        mean_activation=stats.mean_activation.astype(np.float32, copy=False),
        hist_edges=stats.hist_edges.astype(np.float32, copy=False),
        hist_counts=stats.hist_counts.astype(np.int64, copy=False),
        hist_n_bins=stats.hist_n_bins.astype(np.int32, copy=False),
        top_context=rows_of(top.context),
        top_max_pos=top.max_pos.astype(np.int16, copy=False),
        top_max_value=top.max_value.astype(np.float32, copy=False),
        value_offsets=top.value_offsets.astype(np.int64, copy=False),
        value_pos=top.value_pos.astype(np.int16, copy=False),
        value=top.value.astype(np.float32, copy=False),
        sample_context=rows_of(samples.context),
        sample_max_pos=samples.max_pos.astype(np.int16, copy=False),
        sample_max_value=samples.max_value.astype(np.float32, copy=False),
        sample_value_offsets=samples.value_offsets.astype(np.int64, copy=False),
        sample_value_pos=samples.value_pos.astype(np.int16, copy=False),
        sample_value=samples.value.astype(np.float32, copy=False),
        context_tokens=context_tokens,
        context_lengths=context_lengths,
        promoted_ids=promoted[0].astype(np.int32, copy=False),
        promoted_effects=promoted[1].astype(np.float32, copy=False),
        suppressed_ids=suppressed[0].astype(np.int32, copy=False),
        suppressed_effects=suppressed[1].astype(np.float32, copy=False),
        token_strings=dict(zip(token_ids, decode(token_ids), strict=True)),
        explanations=[""] * meta.d_sae,
        explanation_sources=[""] * meta.d_sae,
    )
