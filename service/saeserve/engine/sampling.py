"""Next-token choice per row: greedy, temperature, top-k, top-p, each row with its own RNG.

Each sequence owns a ``torch.Generator`` seeded from its request, so the same seed gives
the same tokens whatever else shares the batch. Reported logprobs are those of the
model's own distribution (before temperature and truncation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from saeserve.engine.types import SamplingParams


def sample_next(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    *,
    with_logprobs: bool = True,
) -> tuple[list[int], list[float]]:
    """logits [B, V] -> (token ids, their logprobs), one per row.

    Without ``with_logprobs`` the log-softmax over the vocabulary is skipped and every
    logprob is nan.
    """
    logits = logits.float()
    tokens = logits.argmax(dim=-1).tolist()
    for row, p in enumerate(params):
        if p.temperature > 0:
            tokens[row] = _sample_row(logits[row], p, generators[row])
    if not with_logprobs:
        return tokens, [math.nan] * len(tokens)
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(tokens, device=logits.device).unsqueeze(-1))
    return tokens, chosen.squeeze(-1).tolist()


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
