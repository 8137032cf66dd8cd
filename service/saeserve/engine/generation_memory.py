"""What a generation batch holds in memory beyond the weights, for admission to check.

A replica's generation batch must never need more than its budget (settings
``limits.generate_memory_bytes``), whatever combination of requests is admitted. The
batch holds, with B rows (every variant of every request, running or joining) and L the
longest full length among them (prompt + max_new_tokens; the cache is left-padded to
its longest row):

    KV cache      B * (L + SPARE_COLUMNS) * kv_per_token, plus one layer's copy
                  (a join or a leave reassigns the cache, and the next step copies it
                  into fresh buffers layer by layer)
    prefill       n * P * prefill_per_token + n * P^2 * attention_per_pair, for the n
                  rows joining at the next step (prefilled in one forward, padded to
                  the longest prompt P): one layer's activations at a time, the
                  attention scores and probabilities and the mask, the steering hook's
                  float32 copies
    steering      one encode block (``Sae.block_shape`` of pre-activations, at
                  most ``ENCODE_BLOCK_BYTES``), twice for the top-k's workspace: the
                  encoder runs one block at a time, whatever the prompt lengths

The figures per token come from the model's config (layers, heads, head size, MLP
width, dtype) and are an upper bound rather than a measurement: the bench row "1M SAE:
peak memory of eight 960-token steered prompts" compares one with the measured peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from saeserve.engine.kv_cache import SPARE_COLUMNS
from saeserve.model.loader import LoadedModel

MIB = 1 << 20


class RowNeed(NamedTuple):
    """What one row (a variant of a request) needs: its lengths and steering's encoder."""

    prompt: int
    """Prompt tokens (what its prefill runs)."""
    total: int
    """prompt + max_new_tokens: the longest its KV cache gets."""
    encode_bytes: int
    """One block of the largest SAE encode its steering or tracking runs (0 for none)."""


@dataclass(frozen=True)
class GenerationMemory:
    """Bytes per token of one model's generation; see the module docstring."""

    kv_per_token: int
    """Keys and values of every layer for one position of one row."""
    n_layers: int
    prefill_per_token: int
    """Activations of one layer (and the residual stream) per prompt token at a prefill."""
    attention_per_pair: int
    """Attention scores, probabilities and mask per (query, key) pair of one row."""

    @classmethod
    def of(cls, lm: LoadedModel) -> GenerationMemory:
        cfg = lm.model.config.get_text_config()
        d_model, n_layers = lm.layout.d_model, lm.layout.n_layers
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or d_model // heads)
        d_ff = int(
            getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
        )
        elem = lm.dtype.itemsize
        return cls(
            kv_per_token=2 * n_layers * kv_heads * head_dim * elem,
            n_layers=n_layers,
            # residual, norm, q/k/v, attention output (8 d_model), the MLP's gate, up and
            # activation (3 d_ff) in the model's dtype; the steering hook's float32 copy of
            # h, its change and the rows it reads (3 d_model)
            prefill_per_token=(8 * d_model + 3 * d_ff) * elem + 3 * d_model * 4,
            attention_per_pair=2 * heads * elem + 4,
        )

    def batch_bytes(self, rows: Sequence[RowNeed], joining: Sequence[RowNeed]) -> int:
        """Bytes the batch of ``rows`` (running) and ``joining`` (prefilled at the next
        step) needs at most, until its rows finish."""
        every = [*rows, *joining]
        if not every:
            return 0
        longest = max(r.total for r in every)
        kv = len(every) * (longest + SPARE_COLUMNS) * self.kv_per_token
        kv += len(every) * longest * self.kv_per_token // self.n_layers
        encode = max(r.encode_bytes for r in every)
        if not joining:
            return kv + encode
        n, p = len(joining), max(r.prompt for r in joining)
        prefill = n * p * self.prefill_per_token + n * p * p * self.attention_per_pair
        return kv + prefill + encode
