"""The arithmetic of docs/large-saes.md: weight bytes, shards per GPU, bytes per token.

``python -m bench.large_sae_arithmetic`` prints the doc's tables (tests/bench keeps the
doc equal to this output, and checks ``wire_bytes`` against the tensors a ``ShardedSae``
really sends). Weights are what a shard holds: W_enc and W_dec (d_model x latents each)
plus b_enc and the JumpReLU threshold (one value per latent); b_dec stays on the model
replica. A GPU gives ``USABLE`` of its memory to weights (the rest: CUDA context, the
pre-activation blocks of ``ENCODE_BLOCK_BYTES``, Ray's buffers). Per token a shard link
carries what ``ShardedSae`` sends (the SAE-space input in the SAE's dtype) and gets back
(float32 values, int64 ids, float32 partial reconstructions): see ``wire_bytes``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

WIDTHS = (2**20, 2**22, 2**24)
D_MODELS = (768, 2304)
GPUS_GIB = (24, 40, 80, 141)
DTYPES = {"float32": 4, "bfloat16": 2}
USABLE = 0.9
K = 32
SHARD_COUNTS = (2, 4, 8)
GIB = 2**30


def weight_bytes(d_model: int, latents: int, dtype_bytes: int) -> int:
    """Bytes of one SAE's per-latent weights: W_enc, W_dec, b_enc, threshold."""
    return (2 * d_model * latents + 2 * latents) * dtype_bytes


def shards_needed(total_bytes: int, gpu_gib: int) -> int:
    """The fewest equal shards whose weights each fit ``USABLE`` of one GPU."""
    return math.ceil(total_bytes / (USABLE * gpu_gib * GIB))


class WireBytes(NamedTuple):
    """Bytes per token over one model-replica <-> shard link."""

    encode_out: int
    """Model replica to shard: the SAE-space input, d_model values."""
    encode_back: int
    """Shard to model replica: its local top k, float32 values and int64 ids."""
    decode_out: int
    """Reconstruction only: the merged top k (float32 values, int64 ids) to every shard."""
    decode_back: int
    """Reconstruction only: the shard's partial reconstruction, d_model float32."""


def wire_bytes(d_model: int, k: int, dtype_bytes: int) -> WireBytes:
    return WireBytes(d_model * dtype_bytes, k * (4 + 8), k * (4 + 8), d_model * 4)


def _size(n: float) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB else f"{n / 2**20:,.1f} MiB"


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def weights_table() -> str:
    head = "| d_model | latents | dtype | weights | " + " | ".join(
        f"shards on {g} GiB (each)" for g in GPUS_GIB
    )
    lines = [head + " |", "|" + "---|" * (4 + len(GPUS_GIB))]
    for d in D_MODELS:
        for n in WIDTHS:
            for name, b in DTYPES.items():
                total = weight_bytes(d, n, b)
                cells = []
                for g in GPUS_GIB:
                    s = shards_needed(total, g)
                    cells.append(f"{s} ({_size(total / s)})")
                lines.append(
                    f"| {d} | {n // 2**20}M ({n:,}) | {name} | {_size(total)} | "
                    + " | ".join(cells)
                    + " |"
                )
    return "\n".join(lines)


def wire_table() -> str:
    lines = [
        "| d_model | SAE dtype | per shard link: encode out / back | decode out / back | "
        + " | ".join(f"{s} shards: steer / decompose+recon" for s in SHARD_COUNTS)
        + " |",
        "|" + "---|" * (4 + len(SHARD_COUNTS)),
    ]
    for d in D_MODELS:
        for name, b in DTYPES.items():
            w = wire_bytes(d, K, b)
            steer = w.encode_out + w.encode_back
            full = steer + w.decode_out + w.decode_back
            cells = [f"{_kib(s * steer)} / {_kib(s * full)}" for s in SHARD_COUNTS]
            lines.append(
                f"| {d} | {name} | {w.encode_out:,} B / {w.encode_back:,} B | "
                f"{w.decode_out:,} B / {w.decode_back:,} B | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def report() -> str:
    return (
        f"Weights per SAE and the fewest equal shards that fit {USABLE:.0%} of a GPU "
        f"(per-shard weights in brackets):\n\n{weights_table()}\n\n"
        f"Bytes per token over the network at k = {K} (independent of the latents):\n\n"
        f"{wire_table()}\n"
    )


if __name__ == "__main__":
    print(report(), end="")
