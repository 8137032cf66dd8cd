"""A shard of a sharded SAE as a Ray Serve deployment, and the model replica's handle on it.

``SaeShardReplica`` (one deployment per shard, built by ``server/app.py`` beside the model
deployment, with its own replicas and resources: ``SaeSharding``) loads only its latent
range of the SAE, memory-mapped slices of W_enc, b_enc and W_dec, and answers
``SaeShard``'s calls; its methods are synchronous, so Serve runs them on its thread pool.
``RemoteShard`` is the ``ShardEndpoint`` a ``ShardedSae`` in the model replica calls: each
method returns Serve's ``DeploymentResponse`` at once, and ``ShardedSae`` waits on it with
``result()``. That wait blocks its thread, so it must never run on the replica's asyncio
loop: the engine calls an SAE from the Decompose worker thread (``asyncio.to_thread``), the
generation thread (``GenerationLoop``) and Serve's thread pool (GetFeature), never from
the loop; ``result()`` refuses to run there.

Tensors travel on the CPU (Ray pickles them out of band): d_in floats per token to a
shard, k values and ids back (docs/large-saes.md has the bytes).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from saeserve.engine.cosine_rank import Ranked
from saeserve.engine.sae_shards import (
    LatentRange,
    Pending,
    SaeShard,
    ShardEncoding,
    latent_ranges,
    shard_sae,
)
from saeserve.model.loader import resolve_device
from saeserve.sae.formats import read_sae
from saeserve.server.settings import SaeSpec

log = logging.getLogger(__name__)


def shard_deployment_name(model: str, sae_id: str, shard: int) -> str:
    """``Shard_<model>_<sae id>_<i>``, the SAE id's "/" and other odd characters as "_"."""
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in sae_id)
    return f"Shard_{model}_{safe}_{shard}"


def shard_ranges(spec: SaeSpec, d_sae: int) -> list[LatentRange]:
    """The latent ranges of a sharded SAE's shards, in order."""
    sharding = spec.sharding
    assert sharding is not None
    return latent_ranges(d_sae, shards=sharding.shards, ranges=sharding.ranges)


class SaeShardReplica:
    """One shard's deployment: the latents ``shard_ranges(spec, d_sae)[shard]``."""

    def __init__(self, sae: dict[str, Any], shard: int) -> None:
        spec = SaeSpec.model_validate(sae)
        assert spec.sharding is not None
        cfg, tensors = read_sae(
            spec.path, sae_id=spec.effective_id, hook_point=spec.hook_point or None
        )
        latents = shard_ranges(spec, cfg.d_sae)[shard]
        device = resolve_device(spec.sharding.device)
        self.shard = SaeShard(shard_sae(cfg, tensors, latents, device=device), latents)
        log.info("SAE %s shard %d: latents %s on %s", cfg.id, shard, list(latents), device)

    def latents(self) -> LatentRange:
        return self.shard.latents

    def encode(
        self,
        x: Tensor,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
        block_bytes: int | None,
    ) -> ShardEncoding:
        out = self.shard.encode(x, n_top, features, reconstruct, count_fires, block_bytes)
        return ShardEncoding(
            out.values.cpu(),
            out.indices.cpu(),
            None if out.features is None else out.features.cpu(),
            None if out.partial is None else out.partial.cpu(),
            None if out.fire_counts is None else out.fire_counts.cpu(),
        )

    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        return self.shard.decode(values, indices).cpu()

    def decoder_rows(self, features: Tensor) -> Tensor:
        return self.shard.decoder_rows(features).cpu()

    def encoder_columns(self, features: Tensor) -> Tensor:
        return self.shard.encoder_columns(features).cpu()

    def nearest(
        self, decoder_query: Tensor, encoder_query: Tensor, n: int, exclude: int
    ) -> tuple[Ranked, Ranked]:
        dec, enc = self.shard.nearest(decoder_query, encoder_query, n, exclude)
        return Ranked(dec.cosines.cpu(), dec.ids.cpu()), Ranked(enc.cosines.cpu(), enc.ids.cpu())


class RemoteShard:
    """A ``ShardEndpoint`` over a ``SaeShardReplica`` deployment handle."""

    def __init__(self, handle: Any, latents: LatentRange) -> None:
        self.handle, self.latents = handle, latents

    def encode(
        self,
        x: Tensor,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
        block_bytes: int | None,
    ) -> Pending[ShardEncoding]:
        f = None if features is None else features.cpu()
        return self.handle.encode.remote(  # type: ignore[no-any-return]
            x.cpu(), n_top, f, reconstruct, count_fires, block_bytes
        )

    def decode(self, values: Tensor, indices: Tensor) -> Pending[Tensor]:
        return self.handle.decode.remote(values.cpu(), indices.cpu())  # type: ignore[no-any-return]

    def decoder_rows(self, features: Tensor) -> Pending[Tensor]:
        return self.handle.decoder_rows.remote(features.cpu())  # type: ignore[no-any-return]

    def encoder_columns(self, features: Tensor) -> Pending[Tensor]:
        return self.handle.encoder_columns.remote(features.cpu())  # type: ignore[no-any-return]

    def nearest(
        self, decoder_query: Tensor, encoder_query: Tensor, n: int, exclude: int
    ) -> Pending[tuple[Ranked, Ranked]]:
        return self.handle.nearest.remote(  # type: ignore[no-any-return]
            decoder_query.cpu(), encoder_query.cpu(), n, exclude
        )


def remote_shards(spec: SaeSpec, d_sae: int, handles: list[Any]) -> list[RemoteShard]:
    """The model replica's endpoints of a sharded SAE, one per shard deployment handle."""
    ranges = shard_ranges(spec, d_sae)
    if len(ranges) != len(handles):
        raise ValueError(
            f"SAE {spec.effective_id!r}: {len(handles)} shard handles, {len(ranges)} ranges"
        )
    return [RemoteShard(h, r) for h, r in zip(handles, ranges, strict=True)]
