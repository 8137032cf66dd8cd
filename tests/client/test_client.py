"""The sync client against the fake server: conversions, retries, deadlines, auth, errors.

Every method is called over a real gRPC channel; the expected values are the fake's
formulas (tests/client/fake_server.py), written out where a shape or order matters.
"""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest

from saeserve.v1 import saeserve_pb2 as pb
from saeserve_client import (
    NO_RETRY,
    FeatureNeighbour,
    RetryPolicy,
    SaeserveClient,
    SaeserveError,
    Steer,
    collect,
)
from saeserve_client.options import ClientOptions
from tests.client.fake_server import FakeSaeserve, FakeServer, fake_tokens


def test_list_models_converts_enums_to_strings(client: SaeserveClient) -> None:
    [model] = client.list_models()
    assert (model.name, model.family, model.d_model, model.dtype) == ("demo", "gpt2", 16, "float32")
    assert [s.id for s in model.saes] == ["resid_post.0", "mlp_out.1"]
    assert [s.architecture for s in model.saes] == ["topk", "jumprelu"]
    assert model.sae("resid_post.0").k == 4
    assert model.sae("resid_post.0").has_feature_index is True
    with pytest.raises(KeyError):
        model.sae("nope")


def test_tokenize_returns_ids_strings_and_byte_offsets(client: SaeserveClient) -> None:
    tokens = client.tokenize("héllo big world")
    assert tokens.strings == ["<bos>", "héllo", " big", " world"]
    assert tokens.ids.dtype == np.int32 and tokens.ids.tolist()[0] == 0
    assert tokens.offsets.shape == (4, 2)
    assert tokens.offsets.tolist() == [[0, 0], [0, 6], [6, 10], [10, 16]]  # bytes: é is 2


def test_decompose_reshapes_packed_arrays(client: SaeserveClient) -> None:
    texts = ["the cat sat", "a dog"]
    result = client.decompose(texts, top_k=6, feature_ids=[3, 40])
    assert [r.text for r in result] == texts
    first = result[0]
    assert first.tokens == ["<bos>", "the", " cat", " sat"]
    assert first.token_ids.tolist() == list(fake_tokens("the cat sat").ids)
    assert list(first.saes) == ["resid_post.0", "mlp_out.1"]  # model order
    topk = first["resid_post.0"]
    assert topk.top_ids.shape == (4, 6) and topk.top_ids.dtype == np.int32
    assert topk.top_values.shape == (4, 6) and topk.top_values.dtype == np.float32
    assert topk.top_ids[1].tolist() == [5, 6, 7, 8, 9, 10]  # token 1: (t*5 + j) % 64
    assert topk.top_values[1].tolist() == pytest.approx([6.1, 5.1, 4.1, 3.1, 0, 0])  # k=4
    assert topk.top_features(1) == [
        (5, pytest.approx(6.1)),
        (6, pytest.approx(5.1)),
        (7, pytest.approx(4.1)),
        (8, pytest.approx(3.1)),
    ]
    assert topk.dense.shape == (4, 2)
    assert topk.dense[:, 1].tolist() == pytest.approx([0.4, 1.4, 2.4, 3.4])
    assert topk.feature_values(40).tolist() == pytest.approx([0.4, 1.4, 2.4, 3.4])
    assert topk.token_mse is not None and topk.token_mse.shape == (4,)
    assert topk.explained_variance == pytest.approx(0.75)
    jump = first["mlp_out.1"]
    assert jump.top_values[0].tolist() == pytest.approx([6, 5, 4, 3, 2, 1])  # no k cut
    assert result[1]["resid_post.0"].top_ids.shape == (3, 6)


def test_decompose_single_text_saes_and_no_reconstruction(
    client: SaeserveClient, fake: FakeSaeserve
) -> None:
    [only] = client.decompose("x y", saes=["mlp_out.1"], include_reconstruction=False)
    assert list(only.saes) == ["mlp_out.1"]
    part = only["mlp_out.1"]
    assert part.top_k == 16 and part.top_ids.shape == (3, 16)
    assert part.dense.shape == (3, 0)
    assert part.token_mse is None and part.explained_variance is None
    sent = fake.requests["Decompose"]
    assert sent.HasField("include_reconstruction") and sent.include_reconstruction is False
    assert list(sent.texts) == ["x y"]


def test_generate_streams_typed_chunks(client: SaeserveClient, fake: FakeSaeserve) -> None:
    chunks = list(
        client.generate(
            "a b",
            max_new_tokens=3,
            temperature=0.0,
            seed=7,
            stop=["\n"],
            interventions=[
                Steer.add("resid_post.0", 5, 8.0, normalize=True),
                Steer.clamp("resid_post.0", 6, 2.0, positions="generated"),
                Steer.scale("mlp_out.1", 1, 0.5, positions=[0, 2]),
                Steer.ablate("mlp_out.1", 2),
                Steer.vector("resid_post.1", np.ones(16), 3.0),
            ],
            include_baseline=True,
            track=[("resid_post.0", 5), ("mlp_out.1", 1)],
            logprobs=True,
            top_logprobs=2,
            kl_from_baseline=True,
        )
    )
    assert [c.variant for c in chunks] == ["steered", "baseline"] * 3
    first = chunks[0]
    assert (first.index, first.token_id, first.text) == (0, 10, " s0")
    assert first.logprob == pytest.approx(-0.1)
    assert [(t.token_id, t.token) for t in first.top_logprobs] == [(0, "t0"), (1, "t1")]
    assert [t.logprob for t in first.top_logprobs] == pytest.approx([-0.5, -1.0])
    assert first.tracked.tolist() == [0.0, 1.0] and first.tracked.dtype == np.float32
    assert first.finish_reason is None and first.usage is None and not first.is_final
    last = chunks[-1]
    assert last.finish_reason == "length" and last.is_final
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.generated_tokens) == (
        3,
        3,
    )
    gathered = collect(chunks)
    assert gathered["steered"].text == " s0 s1 s2"
    assert gathered["baseline"].text == " b0 b1 b2"
    assert gathered["steered"].tracked.shape == (3, 2)

    sent = fake.requests["Generate"]
    assert sent.prompt == "a b" and sent.include_baseline and sent.logprobs
    assert sent.top_logprobs == 2 and sent.kl_from_baseline
    assert [c.kl_from_baseline for c in chunks] == [0.0, None, 0.25, None, 0.5, None]
    assert sent.sampling.HasField("temperature") and sent.sampling.temperature == 0.0
    assert not sent.sampling.HasField("top_p")
    assert sent.sampling.seed == 7 and list(sent.sampling.stop) == ["\n"]
    modes = [pb.InterventionMode.Name(i.mode) for i in sent.interventions]
    assert modes == [
        f"INTERVENTION_MODE_{m}" for m in ("ADD", "CLAMP", "SCALE", "ABLATE", "VECTOR")
    ]
    add, clamp, scale, _, vector = sent.interventions
    assert add.normalize and add.positions == pb.POSITIONS_ALL and add.value == 8.0
    assert clamp.positions == pb.POSITIONS_GENERATED
    assert scale.positions == pb.POSITIONS_INDICES and list(scale.indices) == [0, 2]
    assert vector.hook_point == "resid_post.1" and list(vector.vector) == [1.0] * 16
    assert [(t.sae, t.feature) for t in sent.track] == [("resid_post.0", 5), ("mlp_out.1", 1)]


def test_generate_sends_chat_messages(client: SaeserveClient, fake: FakeSaeserve) -> None:
    with pytest.raises(SaeserveError) as caught:
        list(client.generate([{"role": "user", "content": "hi"}, ("assistant", "yo")]))
    assert caught.value.code_name == "FAILED_PRECONDITION"
    sent = fake.requests["Generate"]
    assert [(m.role, m.content) for m in sent.messages] == [("user", "hi"), ("assistant", "yo")]
    assert sent.prompt == ""


def test_breaking_out_of_generate_cancels_the_call(
    client: SaeserveClient, fake: FakeSaeserve
) -> None:
    fake.chunk_delay = 0.05  # 200 tokens would take 10 s
    for chunk in client.generate("go", max_new_tokens=200):
        if chunk.index == 1:
            break
    assert fake.generate_ended.wait(3.0), "server still generating after the client broke out"
    time.sleep(0.2)
    assert fake.generate_sent < 20


def test_closing_generate_stream_cancels(client: SaeserveClient, fake: FakeSaeserve) -> None:
    fake.chunk_delay = 0.05
    with client.generate("go", max_new_tokens=200) as stream:
        next(stream)
    assert fake.generate_ended.wait(3.0)
    assert list(stream) == []  # a closed stream just ends


def test_get_feature_converts_everything(client: SaeserveClient) -> None:
    feature = client.get_feature("resid_post.0", 7)
    assert (feature.sae, feature.feature, feature.has_statistics) == ("resid_post.0", 7, True)
    assert feature.density == pytest.approx(0.0125) and feature.tokens_indexed == 40000
    assert feature.histogram is not None
    assert feature.histogram.bin_edges.shape == (5,) and feature.histogram.counts.tolist() == [
        50,
        20,
        5,
        1,
    ]
    top = feature.top_contexts[0]
    assert top.tokens == ["The", " cat", " sat"] and top.max_index == 1
    assert top.values.tolist() == pytest.approx([0.0, 9.5, 1.25])
    assert [e.token for e in feature.top_promoted] == [" cat", " kitten"]
    assert feature.top_suppressed[0].logit_effect == pytest.approx(-0.5)
    assert feature.explanation is not None
    assert (feature.explanation.text, feature.explanation.source) == (
        "cats and kittens",
        "generated",
    )
    (band,) = feature.quantiles
    assert (band.min_activation, band.max_activation) == (1.5, 2.5)
    assert [c.tokens for c in band.contexts] == [["A", " cat"], [" cats", "!"]]
    assert band.contexts[1].max_index == 0 and band.contexts[0].values.tolist() == [0.0, 2.5]
    assert feature.decoder_neighbours == [FeatureNeighbour(3, 0.75), FeatureNeighbour(9, 0.5)]
    assert feature.encoder_neighbours == [FeatureNeighbour(4, 0.25)]


def test_get_feature_without_index_has_no_statistics(client: SaeserveClient) -> None:
    feature = client.get_feature("mlp_out.1", 3)
    assert not feature.has_statistics
    assert feature.histogram is None and feature.explanation is None and feature.top_contexts == []
    assert feature.quantiles == [] and [n.feature for n in feature.decoder_neighbours] == [3, 9]
    assert len(feature.top_promoted) == 2


def test_search_features(client: SaeserveClient, fake: FakeSaeserve) -> None:
    matches = client.search_features("Cats", limit=1)
    assert len(matches) == 1 and fake.requests["SearchFeatures"].limit == 1
    best = matches[0]
    assert (best.sae, best.feature, best.score) == ("resid_post.0", 7, 2.5)
    assert best.explanation is not None and best.explanation.source == "imported"
    assert best.top_tokens == (" cat", " kitten")
    assert client.search_features("cat")[1].explanation is None
    assert client.search_features("zebra") == []


def test_health(client: SaeserveClient, server: FakeServer) -> None:
    assert client.health() == "SERVING"
    from grpc_health.v1 import health_pb2

    server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert client.health() == "NOT_SERVING"


def test_health_without_grpc_health_raises_clear_error(
    client: SaeserveClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("grpc_health", "grpc_health.v1", "grpc_health.v1.health_pb2"):
        monkeypatch.setitem(__import__("sys").modules, name, None)
    with pytest.raises(RuntimeError, match="grpcio-health-checking"):
        client.health()
    assert client.list_models()[0].name == "demo"  # everything else still works


# -- errors, retries, deadlines, auth ------------------------------------------------------


def test_errors_carry_code_and_server_message(client: SaeserveClient) -> None:
    with pytest.raises(SaeserveError) as caught:
        client.decompose("x", top_k=900)
    err = caught.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT and err.code_name == "INVALID_ARGUMENT"
    assert err.message == "decompose.top_k: 900 > limit 256"
    assert err.method == "Decompose"
    assert str(err) == "INVALID_ARGUMENT: decompose.top_k: 900 > limit 256"
    with pytest.raises(SaeserveError) as missing:
        client.get_feature("resid_post.0", 64)
    assert missing.value.code is grpc.StatusCode.NOT_FOUND and "[0, 64)" in missing.value.message


def test_retries_unavailable_then_succeeds(client: SaeserveClient, fake: FakeSaeserve) -> None:
    fake.failures["Tokenize"] = [grpc.StatusCode.UNAVAILABLE] * 2
    assert client.tokenize("a").strings == ["<bos>", "a"]
    assert fake.calls["Tokenize"] == 3


def test_never_retries_invalid_argument(client: SaeserveClient, fake: FakeSaeserve) -> None:
    fake.failures["ListModels"] = [grpc.StatusCode.INVALID_ARGUMENT]
    with pytest.raises(SaeserveError) as caught:
        client.list_models()
    assert caught.value.code_name == "INVALID_ARGUMENT" and caught.value.message == (
        "injected INVALID_ARGUMENT"
    )
    assert fake.calls["ListModels"] == 1


def test_gives_up_after_max_attempts(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.failures["ListModels"] = [grpc.StatusCode.UNAVAILABLE] * 5
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with SaeserveClient(server.address, retry=retry) as client, pytest.raises(SaeserveError) as e:
        client.list_models()
    assert e.value.code_name == "UNAVAILABLE" and fake.calls["ListModels"] == 3
    fake.failures["ListModels"] = [grpc.StatusCode.UNAVAILABLE]
    with SaeserveClient(server.address, retry=NO_RETRY) as client, pytest.raises(SaeserveError):
        client.list_models()
    assert fake.calls["ListModels"] == 4


def test_generate_retries_unavailable_before_first_chunk(
    client: SaeserveClient, fake: FakeSaeserve
) -> None:
    fake.failures["Generate"] = [grpc.StatusCode.UNAVAILABLE] * 2
    assert collect(client.generate("a", max_new_tokens=2))["steered"].text == " s0 s1"
    assert fake.calls["Generate"] == 3


def test_generate_is_not_retried_after_its_first_chunk(
    client: SaeserveClient, fake: FakeSaeserve
) -> None:
    fake.generate_failures_after_first_chunk = [grpc.StatusCode.UNAVAILABLE]
    received = []
    with pytest.raises(SaeserveError) as caught:
        for chunk in client.generate("a", max_new_tokens=3):
            received.append(chunk.text)
    assert caught.value.code_name == "UNAVAILABLE" and caught.value.method == "Generate"
    assert received == [" s0"] and fake.calls["Generate"] == 1


def test_no_retry_sends_one_attempt(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.failures["Tokenize"] = [grpc.StatusCode.UNAVAILABLE]
    fake.failures["Generate"] = [grpc.StatusCode.UNAVAILABLE]
    with SaeserveClient(server.address, retry=NO_RETRY) as client:
        with pytest.raises(SaeserveError) as unary:
            client.tokenize("a")
        with pytest.raises(SaeserveError) as stream:
            list(client.generate("a", max_new_tokens=1))
    assert unary.value.code_name == stream.value.code_name == "UNAVAILABLE"
    assert fake.calls["Tokenize"] == fake.calls["Generate"] == 1


def test_large_requests_are_retried_too(client: SaeserveClient, fake: FakeSaeserve) -> None:
    fake.failures["Tokenize"] = [grpc.StatusCode.UNAVAILABLE]
    text = "a " * 300_000  # 600 kB: past gRPC's default retry buffer of 256 KiB
    assert len(client.tokenize(text).ids) == 300_001
    assert fake.calls["Tokenize"] == 2


def test_health_is_retried(client: SaeserveClient, fake: FakeSaeserve) -> None:
    fake.failures["Health.Check"] = [grpc.StatusCode.UNAVAILABLE]
    assert client.health() == "SERVING" and fake.calls["Health.Check"] == 2


def test_deadline_is_honoured(client: SaeserveClient, fake: FakeSaeserve) -> None:
    fake.delays["ListModels"] = 5.0
    began = time.monotonic()
    with pytest.raises(SaeserveError) as caught:
        client.list_models(timeout=0.3)
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 1.5
    assert fake.calls["ListModels"] == 1  # DEADLINE_EXCEEDED is not retried


def test_the_deadline_covers_every_attempt(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.failures["ListModels"] = [grpc.StatusCode.UNAVAILABLE] * 5
    slow = RetryPolicy(max_attempts=5, initial_backoff=60.0, max_backoff=60.0)
    with (
        SaeserveClient(server.address, retry=slow, timeout=0.5) as client,
        pytest.raises(SaeserveError) as caught,
    ):
        client.list_models()
    # The first retry would wait up to a minute: the deadline ends the call first.
    assert caught.value.code_name == "DEADLINE_EXCEEDED" and fake.calls["ListModels"] == 1


def test_default_deadline_comes_from_options(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.delays["GetFeature"] = 5.0
    began = time.monotonic()
    with SaeserveClient(server.address, timeout=0.3) as client, pytest.raises(SaeserveError) as e:
        client.get_feature("resid_post.0", 1)
    assert e.value.code_name == "DEADLINE_EXCEEDED" and time.monotonic() - began < 1.5


def test_api_key_sent_as_bearer_metadata(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.required_key = "s3cret"
    with SaeserveClient(server.address, api_key="s3cret") as client:
        client.list_models()
    assert fake.metadata["ListModels"]["authorization"] == "Bearer s3cret"
    with SaeserveClient(server.address) as anonymous, pytest.raises(SaeserveError) as e:
        anonymous.list_models()
    assert e.value.code_name == "UNAUTHENTICATED"
    assert "authorization" not in fake.metadata["ListModels"]


def test_unreachable_server_is_unavailable_after_retries() -> None:
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    with (
        SaeserveClient("127.0.0.1:1", retry=retry, timeout=3.0) as client,
        pytest.raises(SaeserveError) as caught,
    ):
        client.list_models()
    assert caught.value.code_name == "UNAVAILABLE"


# -- values built without a server ---------------------------------------------------------


def test_retry_policy_is_the_service_config_grpc_expects() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.25, max_backoff=4.0, multiplier=1.5)
    args = dict(ClientOptions(retry=policy).grpc_channel_args())
    assert args["grpc.enable_retries"] == 1
    [method] = json.loads(args["grpc.service_config"])["methodConfig"]
    assert method["name"] == [
        {"service": "saeserve.v1.Saeserve"},
        {"service": "grpc.health.v1.Health"},
    ]
    assert method["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.25s",
        "maxBackoff": "4s",
        "backoffMultiplier": 1.5,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    # gRPC refuses a retryPolicy of one attempt, so NO_RETRY has none.
    assert (
        json.loads(dict(ClientOptions(retry=NO_RETRY).grpc_channel_args())["grpc.service_config"])
        == {}
    )


def test_retry_policy_refuses_what_grpc_would_not_honour() -> None:
    with pytest.raises(ValueError, match="gRPC's limit"):
        RetryPolicy(max_attempts=6)  # gRPC would silently clamp it to 5
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoffs"):
        RetryPolicy(initial_backoff=0.0)
    with pytest.raises(ValueError, match="retry_codes"):
        RetryPolicy(retry_codes=frozenset())


def test_steer_validates_and_normalizes() -> None:
    assert Steer.scale("s", 1, 2.0, positions=[3, 1]).positions == (3, 1)
    assert Steer.vector("resid_post.0", np.zeros((2, 2)), 2.0).direction == (0.0,) * 4
    with pytest.raises(ValueError, match="mode"):
        Steer("boost", "s", 1, 1.0)
    with pytest.raises(ValueError, match="positions"):
        Steer.add("s", 1, 1.0, positions="everywhere")


def test_clamp_threshold_reaches_the_proto() -> None:
    from saeserve_client.convert import intervention

    msg = intervention(Steer.clamp_threshold("s", 4, 2.0, threshold=0.25, positions="generated"))
    assert msg.mode == pb.INTERVENTION_MODE_CLAMP_THRESHOLD
    assert (msg.sae, msg.feature, msg.value, msg.threshold) == ("s", 4, 2.0, 0.25)
    assert msg.positions == pb.POSITIONS_GENERATED


def test_error_survives_pickling() -> None:
    import pickle

    err = SaeserveError(grpc.StatusCode.NOT_FOUND, "gone", details=(("k", "v"),), method="X")
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.message, back.details, back.method) == (
        grpc.StatusCode.NOT_FOUND,
        "gone",
        (("k", "v"),),
        "X",
    )
