"""The Python client (sync and asyncio) and the CLI against the real server and demo model."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest

from saeserve.engine.decompose import decompose
from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest, GenerateRequest, SamplingParams
from saeserve.server.settings import demo_models
from saeserve_client import AsyncSaeserveClient, SaeserveClient, SaeserveError, Steer, collect
from tests.conftest import KEY, Server
from tests.server.test_metrics_endpoint import delta, scrape, wait_for

DEMO = "demo"
TEXT = "She said that Elizabeth was in the garden."


@pytest.fixture(scope="module")
def demo_engine() -> ServedModel:
    (spec,) = demo_models()
    return ServedModel.load(spec.path, [s.path for s in spec.saes], name=DEMO)


@pytest.fixture
def client(server: Server):  # type: ignore[no-untyped-def]
    with SaeserveClient(server.target, api_key=KEY) as c:
        yield c


def test_sync_client_every_rpc(client: SaeserveClient, demo_engine: ServedModel) -> None:
    models = {m.name: m for m in client.list_models()}
    assert [s.id for s in models[DEMO].saes] == list(demo_engine.saes)
    tokens = client.tokenize(TEXT, model=DEMO)
    assert list(tokens.ids) == demo_engine.lm.tokenizer(TEXT)["input_ids"]
    (doc,) = client.decompose(TEXT, model=DEMO, top_k=4, feature_ids=[325, 1224])
    want = decompose(
        demo_engine, DecomposeRequest(texts=[TEXT], top_k=4, feature_ids=[325, 1224])
    ).texts[0]
    for w in want.saes:
        got = doc[w.sae_id]
        np.testing.assert_array_equal(got.top_ids, w.top_ids)
        np.testing.assert_allclose(got.dense, w.dense_values, rtol=1e-5, atol=1e-5)
    out = collect(
        client.generate(
            "The house was",
            model=DEMO,
            max_new_tokens=5,
            temperature=0,
            interventions=[Steer.add("resid_post.2", 1224, 8.0)],
            include_baseline=True,
        )
    )
    assert set(out) == {"steered", "baseline"} and all(len(g.token_ids) == 5 for g in out.values())
    feature = client.get_feature("resid_post.2", 1224, model=DEMO)
    assert feature.has_statistics and feature.density > 0
    hits = client.search_features("said", model=DEMO, limit=3)
    assert hits and hits[0].sae in demo_engine.saes
    assert client.health() == "SERVING"


def test_ignore_eos_streams_exactly_max_new_tokens(
    client: SaeserveClient, demo_engine: ServedModel
) -> None:
    prompt = "Once upon a time there was a small town by the sea."
    ids = demo_engine.lm.tokenizer(prompt)["input_ids"]
    want = [
        e.token_id
        for e in generate(
            demo_engine, GenerateRequest(ids, SamplingParams(48, temperature=0, ignore_eos=True))
        )
    ]
    # the demo model ends this greedy text early; ignore_eos writes on past its EOS tokens
    assert set(want[:-1]) & set(demo_engine.lm.stop_token_ids)
    plain = collect(client.generate(prompt, model=DEMO, max_new_tokens=48, temperature=0))
    assert plain["steered"].finish_reason == "eos" and len(plain["steered"].token_ids) < 48
    out = collect(
        client.generate(prompt, model=DEMO, max_new_tokens=48, temperature=0, ignore_eos=True)
    )
    assert out["steered"].token_ids == want and len(want) == 48
    assert out["steered"].finish_reason == "length"


def test_async_client_every_rpc(server: Server) -> None:
    async def run() -> None:
        async with AsyncSaeserveClient(server.target, api_key=KEY) as c:
            models = await c.list_models()
            assert DEMO in {m.name for m in models}
            tokens = await c.tokenize(TEXT, model=DEMO)
            (doc,) = await c.decompose(TEXT, model=DEMO, top_k=3)
            assert doc.tokens == list(tokens.strings)
            chunks = [
                ch async for ch in c.generate("Once", model=DEMO, max_new_tokens=4, temperature=0)
            ]
            assert len(chunks) == 4 and chunks[-1].finish_reason == "length"
            assert (await c.get_feature("resid_post.1", 325, model=DEMO)).feature == 325
            assert await c.search_features("she", model=DEMO, limit=2)
            inspection = await c.inspect_features(TEXT, model=DEMO, top_n=2)
            assert inspection.tokens.strings == tokens.strings
            assert all(len(s.features) == 2 for s in inspection.saes.values())
            contrast = await c.contrast_features([TEXT], ["Once"], model=DEMO, top_n=2)
            assert set(contrast) == set(inspection.saes)

    asyncio.run(run())


def test_invalid_argument_is_not_retried_and_deadline_is_honoured(
    server: Server, client: SaeserveClient
) -> None:
    before = scrape(server)
    with pytest.raises(SaeserveError) as info:
        client.decompose(TEXT, model=DEMO, top_k=10_000)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in info.value.message
    assert wait_for(
        lambda: (
            delta(
                before,
                scrape(server),
                "ray_saeserve_requests_total",
                rpc="Decompose",
                code="INVALID_ARGUMENT",
            )
            >= 1
        )
    )
    assert (
        delta(
            before,
            scrape(server),
            "ray_saeserve_requests_total",
            rpc="Decompose",
            code="INVALID_ARGUMENT",
        )
        == 1
    )
    with pytest.raises(SaeserveError) as info:
        list(client.generate("Once", model=DEMO, max_new_tokens=200, ignore_eos=True, timeout=0.05))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unavailable_is_retried_then_raised() -> None:
    with (
        SaeserveClient("127.0.0.1:1", api_key=KEY, timeout=5) as c,
        pytest.raises(SaeserveError) as info,
    ):
        c.list_models()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def _cli(server: Server, *args: str) -> str:
    env = {**os.environ, "SAESERVE_API_KEY": KEY}
    done = subprocess.run(
        [sys.executable, "-m", "saeserve.cli", *args, "--target", server.target],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_subcommands_on_the_demo(server: Server) -> None:
    m = ("--model", DEMO)
    assert "resid_post.1" in _cli(server, "models")
    assert json.loads(_cli(server, "models", "--json"))
    assert '" Elizabeth"' in _cli(server, "decompose", TEXT, "--top-k", "3", *m)
    assert json.loads(_cli(server, "decompose", TEXT, "--json", *m))
    assert "Elizabeth" in _cli(server, "feature", "resid_post.1", "325", *m)
    assert json.loads(_cli(server, "feature", "resid_post.1", "325", "--json", *m))
    assert "resid_post.2/3233" in _cli(server, "search", "said", *m)
    assert json.loads(_cli(server, "search", "said", "--json", *m))
    out = _cli(
        server,
        "generate",
        "The house was",
        "--steer",
        "resid_post.2:1224:add:8",
        "--baseline",
        "--max-new-tokens",
        "6",
        *m,
    )
    assert "steered" in out and "baseline" in out
    lines = _cli(server, "generate", "Once", "--max-new-tokens", "3", "--json", *m).splitlines()
    assert len([json.loads(line) for line in lines if line.strip()]) == 3


def test_inspect_and_contrast_equal_the_engine(
    client: SaeserveClient, demo_engine: ServedModel, server: Server
) -> None:
    from saeserve.engine.feature_stats import (
        ContrastRequest,
        InspectRequest,
        contrast_features,
        inspect_features,
    )

    ids = demo_engine.lm.tokenizer(TEXT)["input_ids"]
    got = client.inspect_features(TEXT, model=DEMO, order_by="max", top_n=5, max_positions=3)
    want = inspect_features(demo_engine, ids, InspectRequest(order_by="max", top_n=5))
    assert list(got.tokens.ids) == ids
    for w in want:
        g = got[w.sae_id]
        assert [f.feature for f in g.features] == [f.feature for f in w.features]
        for gf, wf in zip(g.features, w.features, strict=True):
            assert (gf.count, gf.max_position) == (wf.count, wf.max_position)
            assert gf.positions.tolist() == wf.positions[:3]
            assert gf.max_activation == pytest.approx(wf.max_activation, rel=1e-5)
    texts_a, texts_b = [TEXT, "He said it was fine."], ["The house was by the sea."]
    contrast = client.contrast_features(
        texts_a, texts_b, model=DEMO, unit="text_max", order_by="auroc", top_n=4
    )
    tok = demo_engine.lm.tokenizer
    want_c = contrast_features(
        demo_engine,
        [tok(t)["input_ids"] for t in texts_a],
        [tok(t)["input_ids"] for t in texts_b],
        ContrastRequest(unit="text_max", order_by="auroc", top_n=4),
    )
    for w in want_c:
        g = contrast[w.sae_id]
        assert (g.samples_a, g.samples_b) == (2, 1)
        assert [r.feature for r in g.more_in_a] == [r.feature for r in w.more_in_a]
        assert [r.feature for r in g.more_in_b] == [r.feature for r in w.more_in_b]
    with pytest.raises(ValueError, match="unit: 'sentence' is not one of token, text_max"):
        client.contrast_features(["a"], ["b"], unit="sentence")
    m = ("--model", DEMO)
    assert "features active" in _cli(server, "inspect", TEXT, "--top", "3", *m)
    out = _cli(server, "contrast", "-a", TEXT, "-b", "The house was by the sea.", *m)
    assert "more on A" in out and "more on B" in out
