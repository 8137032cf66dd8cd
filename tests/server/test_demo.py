"""Every RPC on the built-in demo model (served beside the tiny model as "demo")."""

from __future__ import annotations

import numpy as np
import pytest

from saeserve.engine.decompose import decompose
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import DecomposeRequest
from saeserve.server.settings import demo_models
from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, Server

DEMO = "demo"


@pytest.fixture(scope="module")
def demo_engine() -> ServedModel:
    (spec,) = demo_models()
    return ServedModel.load(spec.path, [s.path for s in spec.saes], name=DEMO)


def test_demo_is_listed_with_its_saes(server: Server, demo_engine: ServedModel) -> None:
    models = {
        m.name: m for m in server.stub.ListModels(pb.ListModelsRequest(), metadata=AUTH).models
    }
    demo = models[DEMO]
    assert demo.family == "gpt2"
    assert len(demo.saes) >= 2
    assert all(s.has_feature_index and s.k == 32 for s in demo.saes)
    assert [s.id for s in demo.saes] == list(demo_engine.saes)


def test_demo_tokenize_and_decompose_equal_the_engine(
    server: Server, demo_engine: ServedModel
) -> None:
    text = (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    )
    tokens = server.stub.Tokenize(pb.TokenizeRequest(model=DEMO, text=text), metadata=AUTH).tokens
    assert list(tokens.ids) == demo_engine.lm.tokenizer(text)["input_ids"]
    resp = server.stub.Decompose(
        pb.DecomposeRequest(model=DEMO, texts=[text], top_k=8, feature_ids=[0, 1]), metadata=AUTH
    )
    want = decompose(
        demo_engine, DecomposeRequest(texts=[text], top_k=8, feature_ids=[0, 1])
    ).texts[0]
    n = len(want.tokenization.token_ids)
    for got, exp in zip(resp.texts[0].saes, want.saes, strict=True):
        np.testing.assert_array_equal(np.array(got.top_ids).reshape(n, 8), exp.top_ids)
        np.testing.assert_allclose(
            np.array(got.top_values).reshape(n, 8), exp.top_values, rtol=1e-5, atol=1e-5
        )
        assert got.explained_variance > 0.5  # a trained SAE reconstructs real text well


def test_demo_generate_get_feature_and_search(server: Server, demo_engine: ServedModel) -> None:
    sae = next(iter(demo_engine.saes))
    chunks = list(
        server.stub.Generate(
            pb.GenerateRequest(
                model=DEMO,
                prompt="The house was",
                sampling=pb.SamplingParams(max_new_tokens=6, temperature=0),
                interventions=[
                    pb.Intervention(mode=pb.INTERVENTION_MODE_CLAMP, sae=sae, feature=3, value=5.0)
                ],
                include_baseline=True,
            ),
            metadata=AUTH,
        )
    )
    assert {c.variant for c in chunks} == {pb.VARIANT_STEERED, pb.VARIANT_BASELINE}
    feature = server.stub.GetFeature(
        pb.GetFeatureRequest(model=DEMO, sae=sae, feature=3), metadata=AUTH
    )
    assert feature.has_statistics and feature.tokens_indexed > 0 and feature.explanation.text
    hits = server.stub.SearchFeatures(
        pb.SearchFeaturesRequest(model=DEMO, query="the", limit=5), metadata=AUTH
    ).matches
    assert hits and all(h.feature.sae in demo_engine.saes for h in hits)
