"""`comfymesh.common.v1.Value` (exact JSON: integers stay integers) to plain Python values."""

from __future__ import annotations

from typing import Any

from comfymesh.common.v1 import value_pb2


def value_to_python(value: value_pb2.Value) -> Any:
    """The Python value of an exact JSON value (None for JSON null or an unset value)."""
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "uint_value":
        return value.uint_value
    if kind == "double_value":
        return value.double_value
    if kind == "string_value":
        return value.string_value
    if kind == "list_value":
        return [value_to_python(item) for item in value.list_value.values]
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    return None


def struct_to_python(struct: value_pb2.StructValue) -> dict[str, Any]:
    """The dict of an exact JSON object."""
    return {key: value_to_python(item) for key, item in struct.fields.items()}
