"""Fuzz the HTTP API from its own ``/openapi.json`` with schemathesis: no 5xx, no hang, and
the server still healthy afterwards.

Short in CI (``SAESERVE_FUZZ_EXAMPLES``, default 8 cases per operation and phase); by hand,
against a running ``saeserve serve``::

    schemathesis run http://127.0.0.1:8000/openapi.json -H "Authorization: Bearer KEY" \\
        --checks not_a_server_error -n 200 --request-timeout 60 --generation-database none
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import KEY, Server


def test_no_generated_request_gets_a_server_error(server: Server) -> None:
    examples = os.environ.get("SAESERVE_FUZZ_EXAMPLES", "8")
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{server.http_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        examples,
        "--request-timeout",
        "60",
        "--generation-deterministic",  # the same cases every run, no example database
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
    health = health_pb2_grpc.HealthStub(server.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
