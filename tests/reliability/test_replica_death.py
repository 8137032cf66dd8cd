"""A model replica SIGKILLed under load (issue 14, failures 2 and 7).

Every in-flight call ends OK or UNAVAILABLE (before: INTERNAL, "please report it"), health
says NOT_SERVING while the model has no live replica (answered, not timed out) and
SERVING again once Serve has replaced it, and new calls succeed within 30 s.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
from bench.server import replica_pid
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, Server

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


def _status(server: Server) -> int:
    health = health_pb2_grpc.HealthStub(server.channel)
    reply: health_pb2.HealthCheckResponse = health.Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )  # a time-out raises: health must answer
    return int(reply.status)


def test_in_flight_calls_end_unavailable_and_service_recovers(server: Server) -> None:
    codes: list[tuple[grpc.StatusCode, str]] = []
    started = threading.Barrier(7)

    def stream() -> None:
        sampling = pb.SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True)
        request = pb.GenerateRequest(model="demo", prompt="Once", sampling=sampling)
        try:
            call = server.stub.Generate(request, metadata=AUTH, timeout=60)
            first = True
            for _ in call:
                if first:
                    started.wait(30)
                    first = False
            codes.append((grpc.StatusCode.OK, ""))
        except grpc.RpcError as e:
            codes.append((e.code(), e.details()))

    def decompose() -> None:
        started.wait(30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                server.stub.Decompose(
                    pb.DecomposeRequest(model="demo", texts=["The cat sat."]),
                    metadata=AUTH,
                    timeout=60,
                )
                codes.append((grpc.StatusCode.OK, ""))
            except grpc.RpcError as e:
                codes.append((e.code(), e.details()))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    threads += [threading.Thread(target=decompose) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait(60)  # every stream has its first token: they are all in flight
    os.kill(replica_pid("Model_demo"), signal.SIGKILL)
    killed = time.monotonic()
    seen: list[int] = []
    recovered: list[float] = []

    def watch_health() -> None:
        while time.monotonic() - killed < 90:
            seen.append(_status(server))
            if seen[-1] == health_pb2.HealthCheckResponse.SERVING:
                try:
                    server.stub.Decompose(
                        pb.DecomposeRequest(model="demo", texts=["back"]), metadata=AUTH, timeout=30
                    )
                    recovered.append(time.monotonic() - killed)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.25)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    for t in threads:
        t.join(90)
    watcher.join(120)
    assert codes and all(code in ALLOWED for code, _ in codes), codes
    assert any(code == grpc.StatusCode.UNAVAILABLE for code, _ in codes), codes
    assert all("Error" not in details for _, details in codes), codes
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen
    assert recovered, f"not serving again 90 s after the kill: health seen {seen[-5:]}"
    print(f"replica replaced and serving {recovered[0]:.1f} s after the kill")
