"""Rows of token ids of different lengths as one padded batch: ids and attention mask.

Decomposition pads on the right (every real token then sits where it would alone, and a
forward without a cache needs no position ids); generation pads prompts on the left, so
every row's next token is appended in the same column; index building pads to a fixed
context length. The pad id is the model's (``LoadedModel.pad_token_id``); what it is
never matters, since the mask hides every padded position.

    ids, mask = pad_token_ids([[5, 6, 7], [8]], pad_id=lm.pad_token_id, left=True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_token_ids(
    rows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    left: bool = False,
    width: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """ids [B, width] int64 and mask [B, width] int64 (1 on real tokens) of ``rows``,
    padded on the right (or ``left``) to ``width`` (default: the longest row)."""
    n = max((len(r) for r in rows), default=0) if width is None else width
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(n - len(r), n) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)
