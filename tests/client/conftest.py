"""Fixtures for client tests: a fake saeserve server on a free port, and clients for it.

The server (tests/client/fake_server.py) runs in this process on grpc's thread pool;
CLI tests reach it from subprocesses through ``server.address``. Retries back off for
milliseconds here so that retry tests stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from saeserve_client import RetryPolicy, SaeserveClient
from tests.client.fake_server import FakeSaeserve, FakeServer

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    running = FakeServer().start()
    yield running
    running.stop()


@pytest.fixture
def fake(server: FakeServer) -> FakeSaeserve:
    return server.servicer


@pytest.fixture
def client(server: FakeServer) -> Iterator[SaeserveClient]:
    with SaeserveClient(server.address, retry=FAST_RETRY, timeout=10.0) as opened:
        yield opened
