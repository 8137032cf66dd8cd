"""docs/large-saes.md holds what ``python -m bench.large_sae_arithmetic`` prints, and its
formulas are what a sharded SAE really holds and sends: weight bytes against the shards'
tensors, bytes per token against the tensors passed to and from counting shards."""

from __future__ import annotations

from pathlib import Path

import torch
from bench.large_sae_arithmetic import report, shards_needed, weight_bytes, wire_bytes
from torch import Tensor

from saeserve.engine.sae_shards import LocalShard, Pending
from saeserve.engine.sharded_sae import ShardedSae, split_in_process
from saeserve.sae.base import Activation
from tests.engine.conftest import random_sae

DOC = Path(__file__).resolve().parents[2] / "docs" / "large-saes.md"


def test_the_doc_holds_the_scripts_tables() -> None:
    assert report() in DOC.read_text()


def _nbytes(value: object) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    return 0


class Counting:
    """A LocalShard that adds up the tensor bytes of every call, each way."""

    def __init__(self, inner: LocalShard) -> None:
        self.inner, self.latents = inner, inner.latents
        self.out: dict[str, int] = {}
        self.back: dict[str, int] = {}

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self.inner, name)

        def call(*args: object) -> Pending[object]:
            pending = method(*args)
            self.out[name] = self.out.get(name, 0) + _nbytes(args)
            self.back[name] = self.back.get(name, 0) + _nbytes(pending.result())
            return pending

        return call


def test_wire_bytes_are_what_a_sharded_sae_sends() -> None:
    d, k, n_tok = 48, 16, 10
    sae = random_sae(d, "resid_post.0", sae_id="s", k=k, d_sae=1000).requires_grad_(False)
    split = split_in_process(sae, shards=3)
    counting = [Counting(s) for s in split.shards]  # type: ignore[arg-type]
    sharded = ShardedSae(sae.cfg, sae.b_dec, counting)  # type: ignore[arg-type]
    sharded.encode_sparse(torch.randn(n_tok, d), reconstruct=True)
    want = wire_bytes(d, k, 4)
    for c in counting:
        assert c.out["encode"] == n_tok * want.encode_out
        assert c.back["encode"] == n_tok * want.encode_back
        assert c.out["decode"] == n_tok * want.decode_out
        assert c.back["decode"] == n_tok * want.decode_back


def test_weight_bytes_are_the_shards_tensors() -> None:
    sae = random_sae(24, "resid_post.0", sae_id="s", activation=Activation.JUMPRELU, d_sae=999)
    split = split_in_process(sae, ranges=[[0, 300], [300, 999]])
    held = sum(
        t.numel() * t.element_size()
        for s in split.shards
        for name, t in s.shard.sae.named_parameters()  # type: ignore[attr-defined]
        if name != "b_dec"
    )
    assert held == weight_bytes(24, 999, 4)
    assert shards_needed(weight_bytes(768, 2**24, 2), 24) == 3  # 48.1 GiB over 21.6 GiB
