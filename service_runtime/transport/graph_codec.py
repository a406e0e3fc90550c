"""Workflow graphs between their three wire encodings and the engine's plain form, exactly.

The plain form is ComfyUI's API format as Python values: `{node_id: {"class_type": str, "inputs": {...},
"_meta": {...}}}`, with a link written as `[node_id, output_index]` and integers as Python ints (unbounded, so
seeds up to 2^64 - 1 survive). Encodings:
- `workflow_json` (text): parsed here with exact integers: the exact path for REST callers;
- `graph` (`comfymesh.common.v1.WorkflowGraph`): typed and exact, for gRPC callers;
- `workflow` (`google.protobuf.Struct`): ComfyUI's JSON pasted as is over REST. Struct numbers are doubles, so
  integers at or above 2^53 may already have been rounded before they reached us; they are rejected with
  INEXACT_INTEGER rather than run with a different seed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import struct_pb2

from comfymesh.common.v1 import graph_pb2, value_pb2
from service_runtime.errors import FieldViolation, Reason, ServiceError, invalid_argument

Graph = dict[str, dict[str, Any]]
EXACT_DOUBLE_LIMIT = 2**53
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _malformed(message: str, field: str) -> ServiceError:
    return invalid_argument(message, FieldViolation(field, message, "WORKFLOW_MALFORMED"),
                            reason=Reason.WORKFLOW_MALFORMED)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_workflow_json(text: str, field: str = "workflow_json") -> Graph:
    """Parses API-format JSON text with exact integers; malformed text is a typed error with its position."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _malformed(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", field) from None
    except ValueError as exc:
        raise _malformed(str(exc), field) from None
    return normalise_graph(value, field)


def normalise_graph(value: Any, field: str = "workflow") -> Graph:
    """Checks the API-format shape (an object of node objects) and returns it in the plain form."""
    if not isinstance(value, dict):
        raise _malformed(f"a workflow is a JSON object of nodes, not {type(value).__name__}", field)
    if not value:
        raise _malformed("the workflow has no nodes", field)
    graph: Graph = {}
    violations: list[FieldViolation] = []
    for node_id, node in value.items():
        path = f"{field}.{node_id}"
        if not isinstance(node, dict):
            violations.append(FieldViolation(path, "a node must be a JSON object", "WORKFLOW_MALFORMED"))
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            violations.append(FieldViolation(f"{path}.class_type", "class_type must be a non-empty string",
                                             "WORKFLOW_MALFORMED"))
            continue
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            violations.append(FieldViolation(f"{path}.inputs", "inputs must be a JSON object", "WORKFLOW_MALFORMED"))
            continue
        entry: dict[str, Any] = {"class_type": class_type, "inputs": inputs}
        meta = node.get("_meta")
        if isinstance(meta, dict):
            entry["_meta"] = meta
        graph[str(node_id)] = entry
    if violations:
        raise invalid_argument(f"the workflow is malformed ({len(violations)} problem(s))", *violations,
                               reason=Reason.WORKFLOW_MALFORMED)
    return graph


def graph_to_json(graph: Graph) -> str:
    """Exact JSON text (Python's json writes ints of any size as written)."""
    return json.dumps(graph, separators=(",", ":"), ensure_ascii=False)


# --- google.protobuf.Struct (REST paste) ---

def _from_struct_value(value: struct_pb2.Value, path: str, violations: list[FieldViolation]) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer():
            if abs(number) >= EXACT_DOUBLE_LIMIT:
                violations.append(FieldViolation(
                    path, f"integer {number:.0f} is at or above 2^53 and may have been rounded in JSON transport; "
                          "send the graph as workflow_json (text) or as the typed graph", "INEXACT_INTEGER"))
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _from_struct_value(v, f"{path}.{k}", violations) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_from_struct_value(v, f"{path}[{i}]", violations) for i, v in enumerate(value.list_value.values)]
    return None


def graph_from_struct(struct: struct_pb2.Struct, field: str = "workflow") -> Graph:
    violations: list[FieldViolation] = []
    plain = {k: _from_struct_value(v, f"{field}.{k}", violations) for k, v in struct.fields.items()}
    if violations:
        raise invalid_argument("the workflow has integers that JSON numbers cannot carry exactly", *violations,
                               reason=Reason.INEXACT_INTEGER)
    return normalise_graph(plain, field)


# --- comfymesh.common.v1 typed graph ---

def is_link(value: Any) -> bool:
    """ComfyUI's rule: a two-element list `[node_id: str, output_index: int]` is a link."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def value_to_proto(value: Any, path: str = "value") -> value_pb2.Value:
    if value is None:
        return value_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return value_pb2.Value(bool_value=value)
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return value_pb2.Value(int_value=value)
        if 0 <= value <= UINT64_MAX:
            return value_pb2.Value(uint_value=value)
        raise invalid_argument(f"integer out of the 64-bit range at {path}",
                               FieldViolation(path, f"{value} does not fit in 64 bits", "INTEGER_OUT_OF_RANGE"))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise invalid_argument(f"non-finite number at {path}", FieldViolation(path, "NaN/Infinity", "NOT_FINITE"))
        return value_pb2.Value(double_value=value)
    if isinstance(value, str):
        return value_pb2.Value(string_value=value)
    if isinstance(value, list):
        return value_pb2.Value(list_value=value_pb2.ListValue(
            values=[value_to_proto(v, f"{path}[{i}]") for i, v in enumerate(value)]))
    if isinstance(value, dict):
        return value_pb2.Value(struct_value=value_pb2.StructValue(
            fields={str(k): value_to_proto(v, f"{path}.{k}") for k, v in value.items()}))
    raise invalid_argument(f"unsupported value type {type(value).__name__} at {path}",
                           FieldViolation(path, "not a JSON value", "WORKFLOW_MALFORMED"))


def value_from_proto(value: value_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "list_value":
        return [value_from_proto(v) for v in value.list_value.values]
    if kind == "struct_value":
        return {k: value_from_proto(v) for k, v in value.struct_value.fields.items()}
    return getattr(value, kind)


def graph_to_proto(graph: Graph) -> graph_pb2.WorkflowGraph:
    message = graph_pb2.WorkflowGraph()
    for node_id, node in graph.items():
        target = message.nodes[node_id]
        target.class_type = node["class_type"]
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                target.inputs[name].link.node_id = value[0]
                target.inputs[name].link.output_index = value[1]
            else:
                target.inputs[name].literal.CopyFrom(value_to_proto(value, f"graph.{node_id}.inputs.{name}"))
        if node.get("_meta"):
            target.meta.CopyFrom(value_to_proto(node["_meta"]).struct_value)
    return message


def graph_from_proto(message: graph_pb2.WorkflowGraph, field: str = "graph") -> Graph:
    plain: dict[str, Any] = {}
    for node_id, node in message.nodes.items():
        inputs: dict[str, Any] = {}
        for name, item in node.inputs.items():
            if item.WhichOneof("kind") == "link":
                inputs[name] = [item.link.node_id, item.link.output_index]
            else:
                inputs[name] = value_from_proto(item.literal)
        entry: dict[str, Any] = {"class_type": node.class_type, "inputs": inputs}
        if node.HasField("meta"):
            entry["_meta"] = {k: value_from_proto(v) for k, v in node.meta.fields.items()}
        plain[node_id] = entry
    return normalise_graph(plain, field)


def graph_from_request(request: Any) -> Graph:
    """The plain graph from a request with the `workflow_source` oneof (Validate/SubmitExecution)."""
    source = request.WhichOneof("workflow_source")
    if source == "workflow_json":
        return parse_workflow_json(request.workflow_json)
    if source == "graph":
        return graph_from_proto(request.graph)
    if source == "workflow":
        return graph_from_struct(request.workflow)
    raise invalid_argument("a workflow is required: set workflow (JSON object), workflow_json (text) or graph",
                           FieldViolation("workflow", "missing", "REQUIRED"))
