"""The Ray Serve application ``saeserve``: an ingress deployment and one deployment per model.

``build_app(settings)`` binds the graph; ``app_builder(args)`` is the import path a Serve
config file names (``saeserve.server.app:app_builder``, args ``{config: FILE, set: [...]}``);
``start(settings)`` starts Ray and Serve and runs the app, as ``saeserve serve`` does. The
ingress replicas serve gRPC themselves on ``settings.grpc_port`` (``ingress.py``; Ray
Serve's own gRPC proxy is not used) and HTTP through Serve's HTTP proxy on
``settings.http_port``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve
from ray.serve import Application

from saeserve.server import local_ray
from saeserve.server.ingress import SaeserveIngress
from saeserve.server.replica import ModelReplica
from saeserve.server.settings import ServerSettings, overrides_from_assignments

log = logging.getLogger(__name__)

APP_NAME = "saeserve"


def deployment_name(model: str) -> str:
    return f"Model_{model}"


def build_app(settings: ServerSettings) -> Application:
    limits = settings.limits.model_dump(mode="json")
    models = {}
    for spec in settings.models:
        replica = serve.deployment(ModelReplica).options(  # type: ignore[attr-defined]
            name=deployment_name(spec.name),
            num_replicas=settings.replicas,
            ray_actor_options={"num_gpus": settings.num_gpus, "num_cpus": settings.num_cpus},
            # Generate streams and Decompose batches wait inside the replica.
            max_ongoing_requests=settings.limits.max_queue_length
            + settings.limits.max_concurrent_streams,
            max_queued_requests=settings.limits.max_queue_length,
        )
        models[spec.name] = replica.bind(spec.model_dump(mode="json"), limits)
    ingress = serve.deployment(serve.ingress()(SaeserveIngress)).options(  # type: ignore[attr-defined]
        name="SaeserveIngress",
        num_replicas=settings.ingress_replicas,
        ray_actor_options={"num_cpus": 0, "resources": dict(settings.ingress_resources)},
        # HTTP requests reach the ingress through Serve's proxy, which would hold all but
        # Serve's default 5 at a time: an asyncio ingress serves every one of its queue
        max_ongoing_requests=settings.limits.max_queue_length,
    )
    return ingress.bind(_settings_for_replicas(settings), models)


def _settings_for_replicas(settings: ServerSettings) -> dict[str, Any]:
    """Settings as plain data, API keys included (they travel pickled, never logged)."""
    data = settings.model_dump(mode="json")
    data["api_keys"] = settings.api_key_values()
    data["api_keys_file"] = None
    return data


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files: ``import_path: saeserve.server.app:app_builder``."""
    overrides = overrides_from_assignments(args.get("set", []))
    return build_app(ServerSettings.load(args.get("config"), **overrides))


def start(settings: ServerSettings, *, ray_address: str | None = None) -> None:
    """Start (or join) Ray, start Serve and run the app; returns once it is deployed and,
    on a local cluster, once its gRPC port answers health SERVING."""
    import ray

    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, logging_level=logging.WARNING)
        else:
            ray.init(logging_level=logging.WARNING, **local_ray.init_options(settings))
    serve.start(http_options={"host": settings.host, "port": settings.http_port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    if not ray_address:  # a local cluster: the ingress, and so the port, is on this machine
        wait_until_serving(settings.grpc_port)


def wait_until_serving(port: int, timeout_s: float = 120.0) -> None:
    """Block until the gRPC server on this machine's `port` answers health SERVING.

    TimeoutError naming the port if it does not within `timeout_s` (the ingress starts
    its server as it is constructed, a moment after Serve reports the app running)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"grpc_port: nothing answered health on port {port}")
            time.sleep(0.2)
