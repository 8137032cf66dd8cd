"""The JSON API's one schema source: the saeserve.v1 protobuf messages.

Request bodies and responses are the messages' standard protobuf JSON mapping with the
proto's own snake_case field names: enums as names (numbers accepted in requests),
64-bit integers as strings, every field present in responses. ``from_json`` parses a
body into a message (unknown fields and wrong types are INVALID_ARGUMENT naming the
field); ``to_json`` renders one; ``json_schema`` describes a message for
``/openapi.json``, derived from the same descriptors, so the HTTP API cannot drift from
gRPC.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from saeserve.errors import InvalidArgument

M = TypeVar("M", bound=Message)

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    # 64-bit integers are strings in responses; requests may send either
    FieldDescriptor.TYPE_INT64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": ["string", "integer"], "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": ["string", "integer"], "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}


def to_json(message: Message) -> dict[str, Any]:
    """``message`` as its JSON object (snake_case names, every field present)."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def from_json(data: Any, message: M, field: str) -> M:
    """Fill ``message`` from a decoded JSON value; InvalidArgument names ``field``."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"{field}: expected a JSON object, got {type(data).__name__}")
    try:
        return json_format.ParseDict(data, message)
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise InvalidArgument(f"{field}: {e}") from None


def json_schema(descriptor: Descriptor) -> dict[str, dict[str, Any]]:
    """OpenAPI component schemas for ``descriptor`` and every message and enum it uses,
    by full proto name (``saeserve.v1.DecomposeRequest``)."""
    schemas: dict[str, dict[str, Any]] = {}
    _add_message(descriptor, schemas)
    return schemas


def ref(descriptor: Descriptor | EnumDescriptor) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{descriptor.full_name}"}


def _add_message(descriptor: Descriptor, schemas: dict[str, dict[str, Any]]) -> None:
    if descriptor.full_name in schemas:
        return
    properties: dict[str, Any] = {}
    schemas[descriptor.full_name] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    for f in descriptor.fields:
        properties[f.name] = _field_schema(f, schemas)


def _field_schema(f: FieldDescriptor, schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        _add_message(f.message_type, schemas)
        item: dict[str, Any] = ref(f.message_type)
    elif f.type == FieldDescriptor.TYPE_ENUM:
        _add_enum(f.enum_type, schemas)
        item = ref(f.enum_type)
    else:
        item = dict(_SCALARS[f.type])
    if f.is_repeated:
        return {"type": "array", "items": item}
    return item


def _add_enum(descriptor: EnumDescriptor, schemas: dict[str, dict[str, Any]]) -> None:
    names = [v.name for v in descriptor.values]
    numbers = [v.number for v in descriptor.values]
    schemas[descriptor.full_name] = {
        "oneOf": [{"type": "string", "enum": names}, {"type": "integer", "enum": numbers}]
    }
