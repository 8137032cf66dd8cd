"""Every input costs bounded work before it is checked (issue 14, failures 1 and 3).

Before: a 50 MiB Generate prompt kept the ingress tokenizing for minutes at up to ~15 GB;
now it is refused by its size, unread by the tokenizer. Each refusal names the field and
the limit; the ingress's memory barely moves.
"""

from __future__ import annotations

import grpc
import pytest

from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, Server
from tests.reliability.replicas import replica_pid, rss_bytes

BIG = 50 * 1024 * 1024


def test_a_50_mib_text_is_refused_by_its_size_in_every_rpc(server: Server) -> None:
    ingress = replica_pid("SaeserveIngress")
    before = rss_bytes(ingress)
    text = "a" * BIG
    calls = {
        "generate.prompt": lambda: list(
            server.stub.Generate(pb.GenerateRequest(prompt=text), metadata=AUTH, timeout=30)
        ),
        "generate.messages": lambda: list(
            server.stub.Generate(
                pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=text)]),
                metadata=AUTH,
                timeout=30,
            )
        ),
        "tokenize.text": lambda: server.stub.Tokenize(
            pb.TokenizeRequest(text=text), metadata=AUTH, timeout=30
        ),
        "decompose.texts[1]": lambda: server.stub.Decompose(
            pb.DecomposeRequest(texts=["fine", text]), metadata=AUTH, timeout=30
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        size = BIG + len("user") * (field == "generate.messages")  # messages count roles too
        assert info.value.details().startswith(f"{field}: {size} bytes is more than")
        assert "limits.max_tokens_per_text" in info.value.details()
    growth = rss_bytes(ingress) - before
    assert growth < 200 * 1024 * 1024, f"ingress RSS grew {growth / 2**20:.0f} MiB"
