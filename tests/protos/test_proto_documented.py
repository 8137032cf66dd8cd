"""Every rpc, field and enum value of the saeserve API carries a comment in its .proto.

The proto is the only source of truth for the API, so an undocumented field is a bug.
Compiles protos/ with source info (comments) into a descriptor set in a temporary
directory and walks it; also checks that every enum starts with ``<ENUM>_UNSPECIFIED = 0``
and that every value is prefixed with its enum's name (proto3 style).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
PROTOS = REPO / "protos"

# SourceCodeInfo paths: FileDescriptorProto fields and nested indices (descriptor.proto).
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, NESTED, NESTED_ENUM, ENUM_VALUE, METHOD = 2, 3, 4, 2, 2


def _compile(tmp: Path) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    out = tmp / "api.pb"
    files = [str(p.relative_to(PROTOS)) for p in sorted(PROTOS.rglob("*.proto"))]
    rc = protoc.main(
        [
            "protoc",
            f"--proto_path={PROTOS}",
            f"--proto_path={resources.files('grpc_tools') / '_proto'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
    )
    assert rc == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _elements(
    proto: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(qualified name, source path) of every element that must have a comment."""

    def enum(e: descriptor_pb2.EnumDescriptorProto, prefix: str, path: tuple[int, ...]):
        for i, v in enumerate(e.value):
            yield f"{prefix}{e.name}.{v.name}", (*path, ENUM_VALUE, i)

    def message(m: descriptor_pb2.DescriptorProto, prefix: str, path: tuple[int, ...]):
        for i, f in enumerate(m.field):
            yield f"{prefix}{m.name}.{f.name}", (*path, FIELD, i)
        for i, n in enumerate(m.nested_type):
            yield from message(n, f"{prefix}{m.name}.", (*path, NESTED, i))
        for i, e in enumerate(m.enum_type):
            yield from enum(e, f"{prefix}{m.name}.", (*path, NESTED_ENUM, i))

    for i, m in enumerate(proto.message_type):
        yield from message(m, "", (MESSAGE, i))
    for i, e in enumerate(proto.enum_type):
        yield from enum(e, "", (ENUM, i))
    for i, s in enumerate(proto.service):
        yield s.name, (SERVICE, i)
        for j, rpc in enumerate(s.method):
            yield f"{s.name}.{rpc.name}", (SERVICE, i, METHOD, j)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    return list(_compile(tmp_path_factory.mktemp("descriptors")).file)


def test_all_in_package_saeserve_v1(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    assert files
    assert {f.package for f in files} == {"saeserve.v1"}


def test_every_field_value_and_rpc_is_documented(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    undocumented = []
    for proto in files:
        comments = {
            tuple(loc.path): loc.leading_comments.strip() for loc in proto.source_code_info.location
        }
        undocumented += [name for name, path in _elements(proto) if not comments.get(path)]
    assert not undocumented, f"add a comment to: {', '.join(undocumented)}"


def test_enums_follow_proto3_style(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    for proto in files:
        for e in proto.enum_type:
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", e.name).upper() + "_"
            assert e.value[0].number == 0 and e.value[0].name == f"{prefix}UNSPECIFIED", e.name
            assert all(v.name.startswith(prefix) for v in e.value), e.name
