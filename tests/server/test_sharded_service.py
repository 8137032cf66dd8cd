"""A 2-way sharded SAE on real Ray Serve answers as the unsharded SAE in the engine.

A second, small Serve app (``sharded``) on the session's Ray: the tiny model with one
SAE split unevenly into two shard deployments. Decompose, steered Generate (CLAMP on an
active feature, ADD on a feature of the other shard, tracking) and GetFeature over its
gRPC port equal the engine's answers with the SAE whole.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from saeserve.engine.decompose import decompose
from saeserve.engine.feature_math import feature_token_effects, nearest_features
from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import (
    DecomposeRequest,
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
    TrackedFeature,
)
from saeserve.sae.formats import load_sae, write_sae
from saeserve.server.settings import ModelSpec, SaeSharding, SaeSpec, ServerSettings
from saeserve.v1 import saeserve_pb2 as pb
from saeserve.v1 import saeserve_pb2_grpc
from tests.conftest import AUTH, KEY, LIMITS, Server, free_port
from tests.engine.conftest import random_sae

D_SAE, SPLIT = 2048, 700
TEXTS = ["The cat sat on the mat.", "Once upon a time"]


@pytest.fixture(scope="module")
def sharded(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[saeserve_pb2_grpc.SaeserveStub, ServedModel]]:
    import grpc
    from ray import serve

    from saeserve.server.app import build_app, wait_until_serving

    sae = random_sae(32, "resid_post.1", sae_id="wide", k=8, seed=9, d_sae=D_SAE)
    path: Path = write_sae(sae, tmp_path_factory.mktemp("sharded") / "wide")
    sharding = SaeSharding(ranges=[(0, SPLIT), (SPLIT, D_SAE)], num_cpus=0.5)
    settings = ServerSettings.load(
        None,
        models=[
            ModelSpec(
                name="sharded", path=server.model_path, saes=[SaeSpec(path=path, sharding=sharding)]
            )
        ],
        grpc_port=free_port(),
        http_port=server.settings.http_port,
        metrics_port=server.settings.metrics_port,
        api_keys=[KEY],
        limits=LIMITS,
        num_cpus=0.5,
    )
    serve.run(build_app(settings), name="sharded", route_prefix="/sharded")
    try:
        wait_until_serving(settings.grpc_port)
        engine = ServedModel.load(server.model_path)
        engine.add_sae(load_sae(path))  # the same SAE whole
        with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            yield saeserve_pb2_grpc.SaeserveStub(channel), engine
    finally:
        serve.delete("sharded")


def test_list_models_describes_the_sharded_sae_whole(sharded) -> None:
    stub, engine = sharded
    (model,) = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=60).models
    (info,) = model.saes
    whole = engine.saes["wide"].sae
    assert (info.shards, info.d_sae, info.dtype) == (2, D_SAE, "float32")
    assert info.weight_bytes == sum(p.nbytes for p in whole.parameters())


def test_decompose_equals_the_unsharded_engine(sharded) -> None:
    stub, engine = sharded
    feats = [3, SPLIT, D_SAE - 1]
    resp = stub.Decompose(
        pb.DecomposeRequest(texts=TEXTS, top_k=8, feature_ids=feats, include_reconstruction=True),
        metadata=AUTH,
    )
    want = decompose(
        engine,
        DecomposeRequest(texts=TEXTS, top_k=8, feature_ids=feats, include_reconstruction=True),
    )
    for got, exp in zip(resp.texts, want.texts, strict=True):
        n = len(exp.tokenization.token_ids)
        (g,), (e,) = got.saes, exp.saes
        np.testing.assert_array_equal(np.array(g.top_ids).reshape(n, 8), e.top_ids)
        np.testing.assert_allclose(np.array(g.top_values).reshape(n, 8), e.top_values, atol=1e-5)
        np.testing.assert_allclose(
            np.array(g.dense_values).reshape(n, 3), e.dense_values, atol=1e-5
        )
        np.testing.assert_allclose(g.token_mse, e.token_mse, rtol=1e-4, atol=1e-6)
    ids = np.concatenate([t.top_ids.ravel() for t in want.texts[0].saes])
    assert (ids >= SPLIT).any() and ((ids >= 0) & (ids < SPLIT)).any()  # both shards answer


def test_steered_generate_and_get_feature_equal_the_unsharded_engine(sharded) -> None:
    stub, engine = sharded
    prompt = TEXTS[1]
    top = int(
        decompose(engine, DecomposeRequest(texts=[prompt], top_k=1)).texts[0].saes[0].top_ids[-1, 0]
    )
    other = SPLIT + 5 if top < SPLIT else 5
    M = InterventionMode
    for mode, feature, value in ((M.CLAMP, top, 6.0), (M.ADD, other, 20.0)):
        req = pb.GenerateRequest(
            prompt=prompt,
            sampling=pb.SamplingParams(max_new_tokens=10, temperature=0),
            interventions=[
                pb.Intervention(
                    mode=f"INTERVENTION_MODE_{mode.name}", sae="wide", feature=feature, value=value
                )
            ],
            track=[pb.FeatureRef(sae="wide", feature=top)],
        )
        chunks = list(stub.Generate(req, metadata=AUTH))
        ids = engine.lm.tokenizer(prompt)["input_ids"]
        want = list(
            generate(
                engine,
                GenerateRequest(
                    ids,
                    SamplingParams(max_new_tokens=10, temperature=0),
                    [Intervention(mode, value, sae_id="wide", feature=feature)],
                    track=[TrackedFeature("wide", top)],
                ),
            )
        )
        assert [c.token_id for c in chunks] == [e.token_id for e in want]
        np.testing.assert_allclose(
            [list(c.tracked) for c in chunks], [e.tracked for e in want], atol=1e-4
        )

    resp = stub.GetFeature(pb.GetFeatureRequest(sae="wide", feature=other), metadata=AUTH)
    near = nearest_features(engine.saes["wide"].sae, other, 10)
    assert [(n.feature, round(n.cosine, 5)) for n in resp.decoder_neighbours] == [
        (n.feature, round(n.cosine, 5)) for n in near.decoder
    ]
    assert [n.feature for n in resp.encoder_neighbours] == [n.feature for n in near.encoder]
    promoted, _ = feature_token_effects(engine.lm, engine.saes["wide"].sae, other, 10)
    assert [t.token_id for t in resp.top_promoted] == [t.token_id for t in promoted]


def _replica_pid(title: str) -> int:
    """PID of the Ray worker whose command line (its process title) contains ``title``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if title.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise LookupError(title)


def test_a_dead_shard_answers_unavailable_never_internal(sharded) -> None:
    """SIGKILL a shard's replica: until Serve replaces it, Decompose answers OK (Serve's
    handle waits for the new replica: what this machine shows) or UNAVAILABLE, never
    INTERNAL (a shard down is neither the caller's mistake nor a bug), then OK. Runs last
    in this module: it leaves the app with a new shard replica."""
    stub, _ = sharded
    os.kill(_replica_pid("ServeReplica:sharded:Shard_sharded_wide_0"), signal.SIGKILL)
    codes: list[grpc.StatusCode] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and grpc.StatusCode.OK not in codes[1:]:
        try:
            stub.Decompose(pb.DecomposeRequest(texts=TEXTS), metadata=AUTH, timeout=30)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
            time.sleep(0.5)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes[-1] == grpc.StatusCode.OK, codes
    print(f"after the kill: {codes}")
