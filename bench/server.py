"""A real saeserve service for the service benchmarks: local Ray, Serve, the gRPC ingress.

``running_server(assets)`` starts Ray on this machine with the app ``saeserve`` serving
one model (``bench``) and its SAE on free loopback ports (``start`` returns once the gRPC
health check says SERVING), and shuts Ray down on exit. Other limits (e.g.
``max_batch_size=1``) get a fresh instance each (``running_server(..., **limits)``).
``replica_pid`` finds the model replica's process among this process's descendants, for
the memory measurement.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.assets import BenchAssets
from saeserve.server import local_ray
from saeserve.server.settings import Limits, ModelSpec, SaeSpec, ServerSettings

MODEL_NAME = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    target: str
    settings: ServerSettings


def bench_settings(
    assets: BenchAssets, grpc_port: int, http_port: int, **limits: Any
) -> ServerSettings:
    return ServerSettings.load(
        None,
        models=[
            ModelSpec(name=MODEL_NAME, path=assets.model_path, saes=[SaeSpec(path=assets.sae_path)])
        ],
        host="127.0.0.1",
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=free_port(),
        log_level="WARNING",
        limits=Limits(**limits),
    )


@contextmanager
def running_server(assets: BenchAssets, threads: int, **limits: Any) -> Iterator[Server]:
    settings = bench_settings(assets, free_port(), free_port(), **limits)
    local_ray.prepare(settings)
    import ray
    from ray import serve

    from saeserve.server.app import start

    # replicas (num_cpus=1) get OMP_NUM_THREADS from Ray; keep it equal to the bench's
    os.environ["OMP_NUM_THREADS"] = str(threads)
    ray.init(
        num_cpus=4,
        logging_level=logging.WARNING,
        log_to_driver=False,
        **local_ray.init_options(settings),
    )
    try:
        start(settings)
        yield Server(f"127.0.0.1:{settings.grpc_port}", settings)  # start() waited for it
    finally:
        serve.shutdown()
        ray.shutdown()


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        try:
            pid = _ppid(pid)
        except (OSError, ValueError, IndexError):
            return False
        seen += 1
    return False


def replica_pid(deployment: str = f"Model_{MODEL_NAME}") -> int:
    """PID of this process's Ray replica of ``deployment`` (Ray titles it ray::ServeReplica:...)."""
    me = os.getpid()
    wanted = f"ServeReplica:saeserve:{deployment}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in cmdline and descends_from(int(entry.name), me):
            return int(entry.name)
    raise LookupError(f"no replica process of {deployment} found under pid {me}")
