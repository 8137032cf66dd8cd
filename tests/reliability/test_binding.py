"""Safe binding (issue 14, failures 5 and 6): a second process cannot silently share the
gRPC port, and Serve's HTTP port answers with the authenticated API, not a 500."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from saeserve.server.grpc_server import SaeserveServicer, build_grpc_server
from saeserve.server.health import Health
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
                    SaeserveServicer(None),  # type: ignore[arg-type]  # never called
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
