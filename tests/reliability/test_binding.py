"""Safe binding (issue 14, failures 5, 6 and 8): a second process cannot silently share the
gRPC port, Serve's HTTP port answers with the authenticated API, not a 500, and with a
loopback host nothing listens beyond loopback."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from saeserve.server.grpc_server import build_grpc_server
from saeserve.server.health import Health
from saeserve.server.operations import Operations
from tests.conftest import Server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _servers(reuse_port: bool) -> tuple[bool, bool]:
    """Whether a first and a second server could each bind the same port."""

    async def main() -> tuple[bool, bool]:
        port = _free_port()
        bound = []
        for _ in range(2):
            try:
                build_grpc_server(
                    object.__new__(Operations),  # no operation is called
                    Health(_never),
                    host="127.0.0.1",
                    port=port,
                    max_message_bytes=4 * 1024 * 1024,
                    max_request_bytes=1024 * 1024,
                    reuse_port=reuse_port,
                )
                bound.append(True)
            except RuntimeError:
                bound.append(False)
        return bound[0], bound[1]

    return asyncio.run(main())


async def _never() -> int:
    raise AssertionError("health is not asked in this test")


def test_a_second_server_cannot_take_the_port_unless_replicas_share_it() -> None:
    assert _servers(reuse_port=False) == (True, False)
    assert _servers(reuse_port=True) == (True, True)  # several ingress replicas on one node


@pytest.mark.parametrize("path", ["/", "/v1/nothing", "/etc/passwd", "/-/routes"])
def test_the_http_port_never_answers_500(server: Server, path: str) -> None:
    response = httpx.get(server.http_url + path, timeout=30)
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text


def test_the_http_api_needs_the_key(server: Server) -> None:
    response = httpx.post(server.http_url + "/v1/decompose", json={"texts": ["a"]}, timeout=30)
    assert response.status_code == 401


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, port_hex = local.rsplit(":", 1)
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    addresses.add(host)
    return addresses


def test_with_a_loopback_host_every_port_listens_on_loopback_only(server: Server) -> None:
    """The settings' host (127.0.0.1 here, the default) is where gRPC, HTTP and the
    metrics listen, and so do Ray's own GCS and raylet ports (failures 5 and 8)."""
    loopback = {
        "0100007F",  # 127.0.0.1
        "00000000000000000000000001000000",  # ::1
        "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
    }
    import ray

    node = ray.get_runtime_context().gcs_address
    ports = {
        "grpc_port": server.settings.grpc_port,
        "http_port": server.settings.http_port,
        "metrics_port": server.settings.metrics_port,
        "Ray's GCS": int(node.rsplit(":", 1)[1]),
    }
    for name, port in ports.items():
        addresses = _listening(port)
        assert addresses and addresses <= loopback, (name, addresses)
