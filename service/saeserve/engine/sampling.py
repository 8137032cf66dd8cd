"""Next-token choice per row: greedy, temperature, top-k, top-p, each row with its own RNG.

Each sequence owns a ``torch.Generator`` seeded from its request, so the same seed gives
the same tokens whatever else shares the batch. Reported logprobs are those of the
model's own distribution (before temperature and truncation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from saeserve.engine.types import SamplingParams


class Sampled(NamedTuple):
    """One decode step's choice for every row."""

    tokens: list[int]
    logprobs: list[float]
    """Each chosen token's logprob; nan when logprobs were not asked for."""
    top: list[list[tuple[int, float]]]
    """Per row, the ``top_n`` most likely (token id, logprob), most likely first."""


def sample_next(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    *,
    with_logprobs: bool = True,
    top_n: int = 0,
) -> Sampled:
    """logits [B, V] -> each row's token, its logprob and the ``top_n`` likeliest tokens.

    Without ``with_logprobs`` the log-softmax over the vocabulary is skipped, every
    logprob is nan and ``top`` is empty.
    """
    logits = logits.float()
    tokens = logits.argmax(dim=-1).tolist()
    for row, p in enumerate(params):
        if p.temperature > 0:
            tokens[row] = _sample_row(logits[row], p, generators[row])
    if not with_logprobs:
        return Sampled(tokens, [math.nan] * len(tokens), [[] for _ in tokens])
    logprobs = torch.log_softmax(logits, dim=-1)  # [B, V]
    chosen = logprobs.gather(-1, torch.tensor(tokens, device=logits.device).unsqueeze(-1))
    top: list[list[tuple[int, float]]] = [[] for _ in tokens]
    if top_n > 0:
        best = torch.topk(logprobs, min(top_n, logprobs.shape[-1]), dim=-1)  # [B, top_n]
        ids, values = best.indices.tolist(), best.values.tolist()
        top = [list(zip(i, v, strict=True)) for i, v in zip(ids, values, strict=True)]
    return Sampled(tokens, chosen.squeeze(-1).tolist(), top)


def _sample_row(logits: Tensor, p: SamplingParams, generator: torch.Generator) -> int:
    scaled = logits / p.temperature  # [V]
    if 0 < p.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, p.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly better tokens
        sorted_probs = sorted_probs.masked_fill(before >= p.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
