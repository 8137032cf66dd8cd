"""The latents nearest a query vector by cosine, exactly, a chunk of latents at a time.

``rank_by_cosine`` ranks the rows of a [latents x d] matrix (decoder rows, or encoder
columns transposed) against one query; ``merge_ranked`` joins rankings of consecutive
latent ranges, so a sharded SAE's shards each rank their own range and the model replica
merges them into the same answer one SAE gives. Ties go to the lower latent id: every
merge is a stable sort of lists that are already in id order on ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from saeserve.engine.types import FeatureNeighbour


class Ranked(NamedTuple):
    """The best latents found, best first."""

    cosines: Tensor  # [m] float32, descending; m <= n
    ids: Tensor  # [m] int64 latent ids


def rank_by_cosine(
    vectors: Tensor, query: Tensor, n: int, *, chunk: int, first_id: int = 0, exclude: int = -1
) -> Ranked:
    """The n rows of ``vectors`` [N, d] (latent ids ``first_id ..``) with the largest cosine
    with ``query`` [d], latent ``exclude`` left out. Float32; a zero vector has cosine 0."""
    tiny = torch.finfo(torch.float32).tiny
    query = query.to(vectors.device).float()
    query = query / query.norm().clamp_min(tiny)
    best = torch.empty(0, device=vectors.device)
    best_ids = torch.empty(0, dtype=torch.int64, device=vectors.device)
    for start in range(0, int(vectors.shape[0]), chunk):
        block = vectors[start : start + chunk].float()  # [c, d]
        cosine = (block @ query) / block.norm(dim=1).clamp_min(tiny)
        ids = torch.arange(start, start + block.shape[0], device=vectors.device) + first_id
        cosine = cosine.masked_fill(ids == exclude, -math.inf)
        best, best_ids = _best(Ranked(best, best_ids), Ranked(cosine, ids), n)
    kept = best > -math.inf
    return Ranked(best[kept], best_ids[kept])


def merge_ranked(parts: Sequence[Ranked], n: int) -> Ranked:
    """The best n of several rankings of consecutive latent ranges, given in id order."""
    out = Ranked(torch.empty(0), torch.empty(0, dtype=torch.int64))
    for part in parts:
        out = _best(out, Ranked(part.cosines.cpu(), part.ids.cpu()), n)
    return out


def _best(kept: Ranked, new: Ranked, n: int) -> Ranked:
    # kept ones first, all with lower ids: a stable sort puts the lower id first on ties
    cosine, ids = torch.cat([kept.cosines, new.cosines]), torch.cat([kept.ids, new.ids])
    order = torch.sort(cosine, descending=True, stable=True).indices[:n]
    return Ranked(cosine[order], ids[order])


def neighbours(ranked: Ranked) -> list[FeatureNeighbour]:
    return [
        FeatureNeighbour(int(i), float(c))
        for i, c in zip(ranked.ids.tolist(), ranked.cosines.tolist(), strict=True)
    ]
