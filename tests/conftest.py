"""A real Ray Serve instance with the saeserve app, started once for the whole test session.

The model is a tiny random GPT-2 with two random SAEs written in the native format, one
with a feature index. The server requires an API key (``KEY``); tests send it in
``authorization: Bearer`` metadata over a real gRPC channel, or an ``Authorization: Bearer``
header over HTTP (``Server.http_url``). tests/client has its own fake ``server`` fixture.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from saeserve.insight.index import build_index
from saeserve.model.loader import load_model
from saeserve.model.tiny import build_tiny_model
from saeserve.sae.formats import write_sae
from saeserve.server.replica import INDEX_DIR
from saeserve.server.settings import Limits, ModelSpec, SaeSpec, ServerSettings, demo_models
from saeserve.v1 import saeserve_pb2_grpc
from tests.engine.conftest import random_sae

KEY = "test-key-0123456789"
AUTH = (("authorization", f"Bearer {KEY}"),)
LIMITS = Limits(
    max_texts_per_request=4,
    max_tokens_per_text=48,
    max_new_tokens=240,
    max_top_k=32,
    max_feature_ids=8,
    max_interventions=3,
    max_abs_intervention_value=100.0,
    max_tracked_features=4,
    max_stop_strings=2,
    max_stop_string_bytes=16,
    max_query_bytes=64,
    max_search_results=20,
    max_batch_size=16,
    batch_wait_timeout_s=0.05,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    target: str
    settings: ServerSettings
    model_path: Path
    sae_paths: list[Path]
    channel: grpc.Channel
    metrics_url: str

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API and web UI, e.g. ``http://127.0.0.1:8123``."""
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def stub(self) -> saeserve_pb2_grpc.SaeserveStub:
        return saeserve_pb2_grpc.SaeserveStub(self.channel)


CORPUS = [
    "The cat sat on the mat. The dog ran to the river and the cat watched it go.",
    "Once upon a time there was a small village by the sea, where fishermen sang.",
    "Numbers like 1, 2, 3 and 42 appear in lists; letters like a, b and c do too.",
]


def build_assets(root: Path) -> tuple[Path, list[Path]]:
    """A tiny model, two SAEs, and a feature index for the first SAE only."""
    model = build_tiny_model("gpt2", root / "model", n_layers=3, d_model=32)
    post0 = random_sae(32, "resid_post.0", sae_id="post0", seed=1)
    saes = [
        write_sae(post0, root / "post0"),
        write_sae(random_sae(32, "resid_post.1", sae_id="post1", k=4, seed=2), root / "post1"),
    ]
    lm = load_model(model)
    build_index(lm, post0, CORPUS, context_length=16, n_top_contexts=4).save(saes[0] / INDEX_DIR)
    return model, saes


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import ray
    from ray import serve

    from saeserve.server.app import start
    from saeserve.server.local_ray import init_options

    root = tmp_path_factory.mktemp("served")
    model, saes = build_assets(root)
    settings = ServerSettings.load(
        None,
        # the tiny model first (the default model), then the built-in demo with its SAEs
        models=[
            ModelSpec(name="tiny", path=model, saes=[SaeSpec(path=p) for p in saes]),
            *demo_models(),
        ],
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        api_keys=[KEY],
        limits=LIMITS,
    )
    ray.init(
        num_cpus=4,
        _system_config={"metrics_report_interval_ms": 500},
        **init_options(settings),
    )
    try:
        start(settings)
        target = f"127.0.0.1:{settings.grpc_port}"
        channel = grpc.insecure_channel(target)  # start() waited until it answers SERVING
        yield Server(
            target,
            settings,
            model,
            saes,
            channel,
            f"http://127.0.0.1:{settings.metrics_port}/metrics",
        )
        channel.close()
    finally:
        serve.shutdown()
        ray.shutdown()
