"""Every RPC over a real gRPC channel to a real Ray Serve instance, checked against the engine."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saeserve.engine.decompose import decompose
from saeserve.engine.feature_math import feature_token_effects
from saeserve.engine.generate import generate
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest, GenerateRequest, SamplingParams
from saeserve.sae.formats import load_sae
from saeserve.server.feature_view import FeatureView
from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, Server


@pytest.fixture(scope="module")
def engine(server: Server) -> ServedModel:
    served = ServedModel.load(server.model_path, name="tiny")
    for p in server.sae_paths:
        served.add_sae(load_sae(p))
    return served


def test_health_and_list_models(server: Server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    model = server.stub.ListModels(pb.ListModelsRequest(), metadata=AUTH).models[0]  # the default
    assert (model.name, model.family, model.n_layers, model.d_model) == ("tiny", "gpt2", 3, 32)
    assert [(s.id, s.hook_point, s.d_sae, s.k) for s in model.saes] == [
        ("post0", "resid_post.0", 64, 8),
        ("post1", "resid_post.1", 64, 4),
    ]
    assert all(s.architecture == pb.SAE_ARCHITECTURE_TOPK for s in model.saes)


def test_tokenize(server: Server, engine: ServedModel) -> None:
    text = "Hello wörld"
    tokens = server.stub.Tokenize(pb.TokenizeRequest(text=text), metadata=AUTH).tokens
    assert list(tokens.ids) == engine.lm.tokenizer(text)["input_ids"]
    assert tokens.byte_ends[-1] == len(text.encode())


def test_decompose_equals_the_engine(server: Server, engine: ServedModel) -> None:
    texts = ["The cat sat on the mat.", "Hi there"]
    resp = server.stub.Decompose(
        pb.DecomposeRequest(texts=texts, top_k=5, feature_ids=[3, 9]), metadata=AUTH
    )
    want = decompose(engine, DecomposeRequest(texts=texts, top_k=5, feature_ids=[3, 9]))
    assert len(resp.texts) == 2
    for got, exp in zip(resp.texts, want.texts, strict=True):
        n = len(exp.tokenization.token_ids)
        assert list(got.tokens.ids) == exp.tokenization.token_ids
        for g, e in zip(got.saes, exp.saes, strict=True):
            assert (g.sae, g.hook_point, g.top_k) == (e.sae_id, e.hook_point, 5)
            np.testing.assert_array_equal(np.array(g.top_ids).reshape(n, 5), e.top_ids)
            np.testing.assert_allclose(
                np.array(g.top_values).reshape(n, 5), e.top_values, atol=1e-5
            )
            np.testing.assert_allclose(
                np.array(g.dense_values).reshape(n, 2), e.dense_values, atol=1e-5
            )
            np.testing.assert_allclose(g.token_mse, e.token_mse, rtol=1e-4, atol=1e-6)
            assert g.explained_variance == pytest.approx(e.explained_variance, abs=1e-5)


def test_generate_streams_the_engines_tokens(server: Server, engine: ServedModel) -> None:
    prompt = "Once upon a time"
    req = pb.GenerateRequest(
        prompt=prompt, sampling=pb.SamplingParams(max_new_tokens=12, temperature=0), logprobs=True
    )
    arrivals, chunks = [], []
    for chunk in server.stub.Generate(req, metadata=AUTH):
        arrivals.append(time.monotonic())
        chunks.append(chunk)
    ids = engine.lm.tokenizer(prompt)["input_ids"]
    want = list(
        generate(engine, GenerateRequest(ids, SamplingParams(max_new_tokens=12, temperature=0)))
    )
    assert [c.token_id for c in chunks] == [e.token_id for e in want]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.variant == pb.VARIANT_STEERED and c.HasField("logprob") for c in chunks)
    assert chunks[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert chunks[-1].usage.prompt_tokens == len(ids) and chunks[-1].usage.generated_tokens == len(
        chunks
    )
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert arrivals[0] < arrivals[-1]  # one chunk at a time, not one reply at the end


def test_generate_with_baseline_streams_both_variants(server: Server) -> None:
    steer = pb.Intervention(mode=pb.INTERVENTION_MODE_ADD, sae="post0", feature=5, value=40.0)
    req = pb.GenerateRequest(
        prompt="The cat sat",
        sampling=pb.SamplingParams(max_new_tokens=8, temperature=0),
        interventions=[steer],
        include_baseline=True,
        track=[pb.FeatureRef(sae="post0", feature=5)],
    )
    chunks = list(server.stub.Generate(req, metadata=AUTH))
    steered = [c for c in chunks if c.variant == pb.VARIANT_STEERED]
    baseline = [c for c in chunks if c.variant == pb.VARIANT_BASELINE]
    assert len(steered) == len(baseline) == 8
    assert [c.token_id for c in steered] != [c.token_id for c in baseline]
    assert all(len(c.tracked) == 1 for c in chunks)


def test_chat_messages_use_the_models_template(server: Server, engine: ServedModel) -> None:
    messages = [("system", "Be brief."), ("user", "Hi there")]
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
        sampling=pb.SamplingParams(max_new_tokens=4, temperature=0),
    )
    chunks = list(server.stub.Generate(req, metadata=AUTH))
    rendered = engine.lm.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert chunks[-1].usage.prompt_tokens == len(rendered)
    want = generate(
        engine, GenerateRequest(list(rendered), SamplingParams(max_new_tokens=4, temperature=0))
    )
    assert [c.token_id for c in chunks] == [e.token_id for e in want]


def test_get_feature_and_search(server: Server, engine: ServedModel) -> None:
    resp = server.stub.GetFeature(pb.GetFeatureRequest(sae="post1", feature=7), metadata=AUTH)
    assert resp.feature.sae == "post1" and resp.feature.feature == 7
    assert len(resp.top_promoted) == 10 and len(resp.top_suppressed) == 10
    effects = [t.logit_effect for t in resp.top_promoted]
    assert effects == sorted(effects, reverse=True)
    # the engine's feature math (checked against the model's own norm in tests/engine)
    promoted, suppressed = feature_token_effects(engine.lm, engine.saes["post1"].sae, 7, 10)
    assert [(t.token_id, t.token) for t in resp.top_promoted] == [
        (t.token_id, t.token) for t in promoted
    ]
    assert [t.token_id for t in resp.top_suppressed] == [t.token_id for t in suppressed]
    # post0 has an index: its answer carries the same tokens as the no-index answer
    indexed = server.stub.GetFeature(pb.GetFeatureRequest(sae="post0", feature=7), metadata=AUTH)
    without = FeatureView(engine, {}).get("post0", 7)
    assert indexed.has_statistics and not without.has_statistics
    for got, want in [
        (indexed.top_promoted, without.top_promoted),
        (indexed.top_suppressed, without.top_suppressed),
    ]:
        assert [(t.token_id, t.token) for t in got] == [(t.token_id, t.token) for t in want]
        assert [t.logit_effect for t in got] == pytest.approx([t.logit_effect for t in want])


def test_get_feature_and_search_from_the_index(server: Server) -> None:
    ranked = server.stub.SearchFeatures(
        pb.SearchFeaturesRequest(query="cat", limit=5), metadata=AUTH
    ).matches
    for m in ranked:
        assert m.feature.sae == "post0"
    scores = [m.score for m in ranked]
    assert scores == sorted(scores, reverse=True)
    # the most frequent feature of the index has statistics and contexts
    resp = server.stub.GetFeature(
        pb.GetFeatureRequest(sae="post0", feature=ranked[0].feature if ranked else 0), metadata=AUTH
    )
    assert resp.has_statistics and resp.tokens_indexed > 0
    assert 0.0 <= resp.density <= 1.0
    if resp.density > 0:
        assert resp.top_contexts and resp.max_activation == pytest.approx(
            max(c.max_value for c in resp.top_contexts)
        )
        assert sum(resp.histogram.counts) > 0
    assert resp.explanation.source in (
        pb.EXPLANATION_SOURCE_GENERATED,
        pb.EXPLANATION_SOURCE_IMPORTED,
    )


def test_concurrent_streams_each_get_their_own_tokens(server: Server, engine: ServedModel) -> None:
    prompts = ["The cat sat", "Hello", "Once upon a time", "A river"]
    results: dict[str, list[int]] = {}

    def run(p: str) -> None:
        req = pb.GenerateRequest(
            prompt=p, sampling=pb.SamplingParams(max_new_tokens=10, temperature=0)
        )
        results[p] = [c.token_id for c in server.stub.Generate(req, metadata=AUTH)]

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in prompts:
        ids = engine.lm.tokenizer(p)["input_ids"]
        want = [
            e.token_id
            for e in generate(
                engine, GenerateRequest(ids, SamplingParams(max_new_tokens=10, temperature=0))
            )
        ]
        assert results[p] == want


def test_generate_reports_how_far_steering_moved_each_step(server: Server) -> None:
    steer = pb.Intervention(mode=pb.INTERVENTION_MODE_ADD, sae="post0", feature=5, value=40.0)
    req = pb.GenerateRequest(
        prompt="The cat sat",
        sampling=pb.SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True),
        interventions=[steer],
        include_baseline=True,
        kl_from_baseline=True,
    )
    chunks = list(server.stub.Generate(req, metadata=AUTH))
    steered = [c for c in chunks if c.variant == pb.VARIANT_STEERED]
    baseline = [c for c in chunks if c.variant == pb.VARIANT_BASELINE]
    assert len(steered) == len(baseline) == 5  # both run every step: every steered chunk has it
    assert all(c.HasField("kl_from_baseline") and c.kl_from_baseline >= 0 for c in steered)
    assert not any(c.HasField("kl_from_baseline") for c in baseline)
    assert max(c.kl_from_baseline for c in steered) > 0
    req.include_baseline = False
    with pytest.raises(grpc.RpcError) as info:
        list(server.stub.Generate(req, metadata=AUTH))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "generate.kl_from_baseline: needs include_baseline to be true"
