"""One shard of a sharded SAE: the latents [start, stop) of an SAE and the work done on them.

A shard holds only its latents' weights: the columns [start, stop) of W_enc and b_enc, the
rows of W_dec, and their thresholds, sliced from the memory-mapped file (``read_sae``),
as a small ``Sae`` of width stop - start whose input normalisation and b_dec are left to
the model replica (``ShardedSae``): a shard receives the SAE-space input
``normalize(x) - b_dec`` and never adds b_dec back. So every number it returns is the
unsharded SAE's own arithmetic on its columns (an encoder matmul over a column slice gives
bit-identical pre-activations), and the model replica's merge is exact.

``SaeShard`` does the work; ``LocalShard`` calls it in process (engine tests, one
machine), ``saeserve.server.shard_replica`` over Ray Serve. Both are ``ShardEndpoint``s:
each call returns at once a ``Pending`` whose ``result()`` waits, so a ``ShardedSae``
asks every shard before it waits for any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, NamedTuple, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from saeserve.engine.cosine_rank import Ranked, rank_by_cosine
from saeserve.errors import InvalidArgument
from saeserve.sae.base import Activation, InputNorm, Sae, SaeConfig
from saeserve.sae.formats import build_sae

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

NEAREST_CHUNK = 2**16
"""Latents a shard compares at a time when ranking neighbours (as ``feature_math``)."""


class LatentRange(NamedTuple):
    """Latent ids [start, stop) of one shard."""

    start: int
    stop: int

    @property
    def width(self) -> int:
        return self.stop - self.start


def latent_ranges(
    d_sae: int, *, shards: int = 0, ranges: Sequence[Sequence[int]] = ()
) -> list[LatentRange]:
    """The shards' latent ranges: ``shards`` near-equal ones, or the explicit ``ranges``,
    which must tile [0, d_sae) in order (uneven widths allowed)."""
    if ranges:
        out = [LatentRange(int(r[0]), int(r[1])) for r in ranges]
    elif shards >= 1:
        if shards > d_sae:
            raise InvalidArgument(f"sharding.shards: {shards} > d_sae {d_sae}")
        out = [LatentRange(i * d_sae // shards, (i + 1) * d_sae // shards) for i in range(shards)]
    else:
        raise InvalidArgument("sharding: give shards >= 1 or ranges")
    expected = 0
    for i, r in enumerate(out):
        if r.start != expected or r.stop <= r.start:
            raise InvalidArgument(
                f"sharding.ranges[{i}]: {list(r)} must start at {expected} and be non-empty"
                f" (ranges tile [0, d_sae={d_sae}) in order)"
            )
        expected = r.stop
    if expected != d_sae:
        raise InvalidArgument(f"sharding.ranges: end at {expected}, not at d_sae {d_sae}")
    return out


class ShardEncoding(NamedTuple):
    """What one shard returns for a block of tokens x [T, d_in]."""

    values: Tensor
    """[T, n] float32 the shard's n strongest latents (after the activation), strongest
    first: its local top-k for a TopK SAE (every latent that can be in the global top k)."""
    indices: Tensor
    """[T, n] int64 their global latent ids."""
    features: Tensor | None
    """[T, F] float32 exact activations of the asked features (ReLU/JumpReLU SAEs)."""
    partial: Tensor | None
    """[T, d_in] float32 sum over the shard's active latents of a_f * W_dec[f] (ReLU/JumpReLU)."""
    fire_counts: Tensor | None
    """[width] int64 tokens each of the shard's latents is active on (ReLU/JumpReLU)."""


class Pending(Protocol[T_co]):
    """A shard's answer on its way (a Ray ``DeploymentResponse`` is one)."""

    def result(self) -> T_co: ...


@dataclass(frozen=True)
class Ready(Generic[T]):
    """An answer already computed (the in-process shard)."""

    value: T

    def result(self) -> T:
        return self.value


class ShardEndpoint(Protocol):
    """How the model replica reaches one shard; ``latents`` is its range."""

    latents: LatentRange

    def encode(
        self,
        x: Tensor,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
        block_bytes: int | None,
    ) -> Pending[ShardEncoding]: ...

    def decode(self, values: Tensor, indices: Tensor) -> Pending[Tensor]: ...

    def decoder_rows(self, features: Tensor) -> Pending[Tensor]: ...

    def encoder_columns(self, features: Tensor) -> Pending[Tensor]: ...

    def nearest(
        self, decoder_query: Tensor, encoder_query: Tensor, n: int, exclude: int
    ) -> Pending[tuple[Ranked, Ranked]]: ...


def shard_sae(
    cfg: SaeConfig,
    tensors: dict[str, tuple[str, Tensor]],
    latents: LatentRange,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Sae:
    """The ``Sae`` of one shard from the whole SAE's (memory-mapped) tensors: its latents'
    weights only, no input normalisation and a zero b_dec (the model replica applies both)."""
    lo, hi = latents
    if not 0 <= lo < hi <= cfg.d_sae:
        raise InvalidArgument(f"shard latents {list(latents)} are not within [0, {cfg.d_sae})")
    local = replace(
        cfg,
        d_sae=hi - lo,
        k=None if cfg.k is None else min(cfg.k, hi - lo),
        input_norm=InputNorm.NONE,
        apply_b_dec_to_input=False,
        metadata={**cfg.metadata, "latents": [lo, hi]},
    )
    cols = {"W_enc": lambda t: t[:, lo:hi], "b_enc": lambda t: t[lo:hi]}
    rows = {"W_dec": lambda t: t[lo:hi], "threshold": lambda t: t[lo:hi]}
    sliced = {
        name: (origin, {**cols, **rows}[name](t))
        for name, (origin, t) in tensors.items()
        if name != "b_dec"
    }
    sliced["b_dec"] = ("zero", torch.zeros(cfg.d_in, dtype=tensors["W_enc"][1].dtype))
    return build_sae(local, sliced, device=device, dtype=dtype).eval().requires_grad_(False)


class SaeShard:
    """The work one shard does on its latents (see the module docstring); ids in and out
    are global, tensors come back as float32 (int64 ids) on the shard's device."""

    def __init__(self, sae: Sae, latents: LatentRange) -> None:
        if sae.d_sae != latents.width:
            raise InvalidArgument(f"shard SAE has {sae.d_sae} latents, its range {latents.width}")
        self.sae, self.latents = sae, latents
        self.device = sae.W_enc.device

    def _local(self, ids: Tensor) -> Tensor:
        return (ids.to(self.device) - self.latents.start).long()

    @torch.inference_mode()
    def encode(
        self,
        x: Tensor,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
        block_bytes: int | None,
    ) -> ShardEncoding:
        """x [T, d_in] in SAE space. A TopK shard returns its local top k (``n_top``
        ignored: the merge needs all k); other shards their ``n_top`` strongest, the
        asked ``features`` (global ids, all owned here), the partial reconstruction and
        the fire counts."""
        sae = self.sae
        x = x.to(self.device)
        topk = sae.cfg.activation is Activation.TOPK
        enc = sae.encode_sparse(
            x,
            k=None if topk else min(n_top, self.latents.width),
            features=None if topk or features is None else self._local(features),
            reconstruct=reconstruct and not topk,
            count_fires=count_fires and not topk,
            block_bytes=block_bytes,
        )
        return ShardEncoding(
            enc.values.float(),
            enc.indices + self.latents.start,
            None if enc.features is None else enc.features.float(),
            None if enc.reconstruction is None else enc.reconstruction.float(),
            enc.fire_counts,
        )

    @torch.inference_mode()
    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """[T, d_in] float32 sum of values * W_dec[f] over the entries of (values, indices)
        [T, k] (global ids) that this shard owns; the others count 0."""
        local = indices.to(self.device) - self.latents.start
        owned = (local >= 0) & (local < self.latents.width)
        weights = torch.where(owned, values.to(self.device), 0).to(self.sae.W_dec.dtype)
        return F.embedding_bag(
            torch.where(owned, local, 0).long(),
            self.sae.W_dec,
            per_sample_weights=weights,
            mode="sum",
        ).float()

    def decoder_rows(self, features: Tensor) -> Tensor:
        """[F, d_in] W_dec rows of owned ``features`` (global ids), stored dtype."""
        return self.sae.W_dec[self._local(features)].detach()

    def encoder_columns(self, features: Tensor) -> Tensor:
        """[F, d_in] W_enc columns of owned ``features`` (global ids), stored dtype."""
        return self.sae.W_enc[:, self._local(features)].T.detach()

    @torch.inference_mode()
    def nearest(
        self, decoder_query: Tensor, encoder_query: Tensor, n: int, exclude: int
    ) -> tuple[Ranked, Ranked]:
        """This shard's n latents nearest each query, by decoder rows and encoder columns."""
        start = self.latents.start

        def rank(vectors: Tensor, query: Tensor) -> Ranked:
            return rank_by_cosine(
                vectors, query, n, chunk=NEAREST_CHUNK, first_id=start, exclude=exclude
            )

        return rank(self.sae.W_dec.detach(), decoder_query), rank(
            self.sae.W_enc.detach().T, encoder_query
        )


class LocalShard:
    """A ``ShardEndpoint`` in this process: each call runs at once."""

    def __init__(self, shard: SaeShard) -> None:
        self.shard, self.latents = shard, shard.latents

    def encode(
        self,
        x: Tensor,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
        block_bytes: int | None,
    ) -> Pending[ShardEncoding]:
        return Ready(self.shard.encode(x, n_top, features, reconstruct, count_fires, block_bytes))

    def decode(self, values: Tensor, indices: Tensor) -> Pending[Tensor]:
        return Ready(self.shard.decode(values, indices))

    def decoder_rows(self, features: Tensor) -> Pending[Tensor]:
        return Ready(self.shard.decoder_rows(features))

    def encoder_columns(self, features: Tensor) -> Pending[Tensor]:
        return Ready(self.shard.encoder_columns(features))

    def nearest(
        self, decoder_query: Tensor, encoder_query: Tensor, n: int, exclude: int
    ) -> Pending[tuple[Ranked, Ranked]]:
        return Ready(self.shard.nearest(decoder_query, encoder_query, n, exclude))
