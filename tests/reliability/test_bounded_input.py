"""Every input costs bounded work before it is checked (issue 14, failures 1 and 3).

Before: a 50 MiB Generate prompt kept the ingress tokenizing for minutes at up to ~15 GB;
a large steering vector passed the ingress and failed INTERNAL on Ray's 4 MiB message cap.
Now a request message over ``max_request_bytes`` is refused before it is parsed, a text
longer than its token limit could cover is refused by its size before the tokenizer sees
it, and repeated fields are counted before they are read; each refusal names the field
or the limit, and the ingress's memory barely moves.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from bench.memory_worker import proc_status_mib
from bench.server import replica_pid

from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, LIMITS, Server

BIG = 50 * 1024 * 1024
MEDIUM = 1024 * 1024  # under max_request_bytes, far over what 48 tokens can cover


def _refusal(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def _calls(server: Server, text: str) -> dict[str, Callable[[], object]]:
    return {
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
        "inspect_features.text": lambda: server.stub.InspectFeatures(
            pb.InspectFeaturesRequest(text=text), metadata=AUTH, timeout=30
        ),
        "inspect_features.messages": lambda: server.stub.InspectFeatures(
            pb.InspectFeaturesRequest(messages=[pb.ChatMessage(role="user", content=text)]),
            metadata=AUTH,
            timeout=30,
        ),
        "contrast_features.texts_b[0]": lambda: server.stub.ContrastFeatures(
            pb.ContrastFeaturesRequest(texts_a=["fine"], texts_b=[text]), metadata=AUTH, timeout=30
        ),
    }


def test_a_50_mib_request_is_refused_unparsed_and_leaves_no_memory(server: Server) -> None:
    ingress = replica_pid("SaeserveIngress")
    before = proc_status_mib("VmRSS", ingress)
    limit = server.settings.max_request_bytes
    for call in _calls(server, "a" * BIG).values():
        details = _refusal(call)
        assert details.startswith("request: ") and f"> limit {limit} (max_request_bytes)" in details
    growth = proc_status_mib("VmRSS", ingress) - before
    assert growth < 200, f"ingress RSS grew {growth:.0f} MiB"


def test_a_text_too_long_for_its_token_limit_is_refused_by_its_size(server: Server) -> None:
    for field, call in _calls(server, "a" * MEDIUM).items():
        details = _refusal(call)
        size = MEDIUM + len("user") * field.endswith(".messages")  # messages count roles
        assert details.startswith(f"{field}: {size} bytes is more than"), details
        assert "limits.max_tokens_per_text" in details


def test_long_repeated_fields_are_counted_before_they_are_read(server: Server) -> None:
    vector = pb.Intervention(
        mode=pb.INTERVENTION_MODE_VECTOR,
        hook_point="resid_post.0",
        value=1.0,
        vector=[0.5] * 20_000,
    )
    details = _refusal(
        lambda: list(
            server.stub.Generate(
                pb.GenerateRequest(prompt="a", interventions=[vector]), metadata=AUTH, timeout=30
            )
        )
    )
    assert details == "generate.interventions[0].vector (count): 20000 > limit 16384"
    many = pb.Intervention(
        mode=pb.INTERVENTION_MODE_ADD,
        sae="post0",
        feature=1,
        value=1.0,
        positions=pb.POSITIONS_INDICES,
        indices=[0] * (LIMITS.max_tokens_per_text + 1),
    )
    details = _refusal(
        lambda: list(
            server.stub.Generate(
                pb.GenerateRequest(prompt="a", interventions=[many]), metadata=AUTH, timeout=30
            )
        )
    )
    assert details.startswith("generate.interventions[0].indices (count): 49 > limit 48")
