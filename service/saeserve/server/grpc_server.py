"""The grpc.aio server an ingress replica runs: saeserve.v1, grpc.health.v1 and reflection.

``SO_REUSEPORT`` is on,
so several ingress replicas on one node can bind the same port and the kernel spreads
connections among them.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from saeserve.server.health import SERVICE_NAME as SAESERVE_SERVICE
from saeserve.v1 import saeserve_pb2_grpc

SERVICE_NAMES = (
    SAESERVE_SERVICE,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)


def bind_address(host: str, port: int) -> str:
    """``host:port`` as grpc wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def build_grpc_server(
    servicer: Any,
    health_servicer: health_pb2_grpc.HealthServicer,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
) -> grpc.aio.Server:
    """A server with both servicers bound to ``host:port``, not yet started.

    RuntimeError if the port cannot be bound (grpc reports that as port 0).
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    saeserve_pb2_grpc.add_SaeserveServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    address = bind_address(host, port)
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"grpc_port: cannot bind {address}")
    return server
