"""Malformed and generated requests over the real wire (issue 14, failure 4, and the
property-based search): never INTERNAL or UNKNOWN, never a Python class name, no hang.

Raw bytes go through a channel with identity serializers, so the server sees exactly what
hypothesis generated. Request messages are generated from the proto's own fields
(``hypothesis`` strategies built from the descriptors), sent through the stub.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saeserve.v1 import saeserve_pb2 as pb
from tests.conftest import AUTH, Server

EXAMPLES = int(os.environ.get("SAESERVE_FUZZ_EXAMPLES", "25"))
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SERVICE = pb.DESCRIPTOR.services_by_name["Saeserve"]


def _call(server: Server, method: str, data: bytes) -> tuple[grpc.StatusCode, str]:
    path = f"/{SERVICE.full_name}/{method}"
    streaming = SERVICE.methods_by_name[method].server_streaming
    identity = bytes
    try:
        if streaming:
            rpc = server.channel.unary_stream(
                path, request_serializer=identity, response_deserializer=identity
            )
            for _ in rpc(data, metadata=AUTH, timeout=60):
                pass
        else:
            rpc = server.channel.unary_unary(
                path, request_serializer=identity, response_deserializer=identity
            )
            rpc(data, metadata=AUTH, timeout=60)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def _acceptable(code: grpc.StatusCode, details: str) -> None:
    assert code not in NEVER, details
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "a request hung for 60 s"
    assert "Error" not in details and "Traceback" not in details, details


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("Decompose", b"\xff\xff\xff\xff"),  # garbage
        ("Decompose", pb.DecomposeRequest(texts=["a" * 40]).SerializeToString()[:-7]),  # truncated
        ("Tokenize", b"\x12\x02\xff\xfe"),  # field 2 (text) is not UTF-8
        ("Generate", b"\x0a\x05model\x12"),  # truncated length
    ],
)
def test_malformed_messages_are_invalid_argument(server: Server, method: str, data: bytes) -> None:
    code, details = _call(server, method, data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("request: not a valid saeserve.v1.") and "Error" not in details


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from([m.name for m in SERVICE.methods]), data=st.binary(max_size=256))
def test_random_bytes_never_get_internal(server: Server, method: str, data: bytes) -> None:
    _acceptable(*_call(server, method, data))


def _message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Field values for ``descriptor``'s message, each field optional."""
    fields = {
        f.name: _field(f, depth) for f in descriptor.fields if depth < 3 or f.type != f.TYPE_MESSAGE
    }
    return st.fixed_dictionaries({}, optional=fields)


_INTS = st.one_of(st.integers(-3, 70), st.integers(-(2**31), 2**31 - 1))
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: st.one_of(
        st.sampled_from(["", "tiny", "demo", "post0", "resid_post.0"]), st.text(max_size=40)
    ),
    FieldDescriptor.TYPE_INT32: _INTS,
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
}


def _field(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.type == f.TYPE_MESSAGE:
        one: st.SearchStrategy[Any] = _message(f.message_type, depth + 1)
    elif f.type == f.TYPE_ENUM:
        one = st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), st.integers(-2, 9))
    else:
        one = _SCALARS[f.type]
    return st.lists(one, max_size=4) if f.is_repeated else one


def _build(descriptor: Descriptor, values: dict[str, Any]) -> Any:
    message = getattr(pb, descriptor.name)()
    for name, value in values.items():
        f = descriptor.fields_by_name[name]
        if f.type == f.TYPE_MESSAGE:
            if f.is_repeated:
                getattr(message, name).extend(_build(f.message_type, v) for v in value)
            else:
                getattr(message, name).CopyFrom(_build(f.message_type, value))
        elif f.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_requests_never_get_internal(server: Server, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(list(SERVICE.methods)))
    values = data.draw(_message(method.input_type))
    request = _build(method.input_type, values)
    _acceptable(*_call(server, method.name, request.SerializeToString()))
