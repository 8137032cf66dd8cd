"""Every active feature of texts through the model and its SAEs, kept sparse on the host.

Aggregated inspection and contrast (``feature_stats``) need each SAE's whole active set,
not the top k a Decompose reports: for a TopK SAE the k latents of each token, for a
JumpReLU or ReLU SAE every non-zero one (``Sae.encode_active``). The texts run through
``decompose.forward_saes`` a group at a time (at most ``FORWARD_TOKENS`` padded tokens per
forward), and only the coordinates of active entries come to the host: memory is
O(active entries), never [tokens x d_sae].

    [active] = collect_active(served, [[50256, 464, 3797]], [served.sae("resid_post.2")])
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from saeserve.engine.decompose import forward_saes
from saeserve.engine.served_model import HookedSae, ServedModel

FORWARD_TOKENS = 8192
"""Padded tokens (texts x longest text) in one forward: bounds the model's activations
and attention scores whatever the number of texts."""


@dataclass
class ActiveFeatures:
    """One SAE's active latents over a list of texts (host arrays, one entry per active
    (token, feature); tokens count text-major over all the texts)."""

    sae_id: str
    hook_point: str
    lengths: np.ndarray
    """[n_texts] int64 tokens of each text."""
    tokens: np.ndarray
    """[nnz] int64 each entry's token, ascending within a text's block."""
    features: np.ndarray
    """[nnz] int64 each entry's feature id."""
    values: np.ndarray
    """[nnz] float64 each entry's activation (> 0)."""

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def text_of_entries(self) -> np.ndarray:
        """[nnz] int64 the text each entry belongs to."""
        return np.searchsorted(np.cumsum(self.lengths), self.tokens, side="right")


def forward_groups(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive texts in groups whose padded size (texts x longest) fits ``budget``
    (a text longer than the budget goes alone)."""
    groups, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * max(longest, n) > budget:
            groups.append(range(start, i))
            start, longest = i, 0
        longest = max(longest, n)
    if start < len(lengths):
        groups.append(range(start, len(lengths)))
    return groups


def collect_active(
    served: ServedModel,
    token_ids: Sequence[Sequence[int]],
    saes: list[HookedSae],
    *,
    lock: AbstractContextManager[Any] | None = None,
) -> list[ActiveFeatures]:
    """Each SAE's active latents over the texts ``token_ids``, in the order of ``saes``.
    ``lock`` (the replica's forward lock) is held for each forward, not between them, so
    a long contrast lets generation steps in between its groups."""
    lengths = [len(t) for t in token_ids]
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {h.id: [] for h in saes}
    for group in forward_groups(lengths, FORWARD_TOKENS):
        offset = sum(lengths[: group.start])

        def read(hooked: list[HookedSae], x: Tensor, offset: int = offset) -> None:
            for h in hooked:
                enc = h.sae.encode_active(x)
                parts[h.id].append(
                    (
                        enc.rows.cpu().numpy() + offset,
                        enc.features.cpu().numpy(),
                        enc.values.double().cpu().numpy(),
                    )
                )

        with lock or nullcontext():
            forward_saes(served, [token_ids[i] for i in group], saes, read)
    return [
        ActiveFeatures(
            sae_id=h.id,
            hook_point=h.hook_point.name,
            lengths=np.asarray(lengths, dtype=np.int64),
            tokens=np.concatenate([p[0] for p in parts[h.id]]).astype(np.int64),
            features=np.concatenate([p[1] for p in parts[h.id]]).astype(np.int64),
            values=np.concatenate([p[2] for p in parts[h.id]]),
        )
        for h in saes
    ]
