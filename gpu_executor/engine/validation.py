"""Validates a graph against the node catalog with ComfyUI's rules and vocabulary.

Differences from ComfyUI, on purpose: every bad input is a validation error, never an exception or a server error
(a link to a missing node, an output index out of range, a literal where only a link makes sense, a non-object
graph); and a graph is valid only if every output node validates (see ValidationResult for the policy).
Literal values are converted the way ComfyUI converts them (int(), float(), str()) and written back, so nodes
receive the converted values.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from gpu_executor.engine.errors import MESSAGES, NodeError, NodeErrorType, ValidationResult
from gpu_executor.engine.graph import Graph, GraphNode, Link, parse_graph
from gpu_executor.engine.node_types import ANY_TYPE, InputDef, NodeSpec
from gpu_executor.engine.registry import NodeRegistry

log = logging.getLogger(__name__)
_CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _error(kind: NodeErrorType, details: str, node_id: str, input_name: str = "", **fmt: Any) -> NodeError:
    return NodeError(kind, MESSAGES[kind].format(**fmt), details, node_id, input_name)


def types_compatible(received: str, expected: str) -> bool:
    """ComfyUI's rule: equal, either side "*", or (comma-separated unions) every received type is accepted."""
    if received == expected or ANY_TYPE in (received, expected):
        return True
    received_set = {t.strip() for t in received.split(",")}
    expected_set = {t.strip() for t in expected.split(",")}
    return received_set <= expected_set


def _convert(definition: InputDef, value: Any, node_id: str) -> tuple[Any, NodeError | None]:
    kind = definition.type
    converter = _CONVERTERS.get(kind)
    if converter is None:
        return value, None
    if isinstance(value, (dict, list)) or (kind != "STRING" and value is None):
        return value, _error(NodeErrorType.INVALID_INPUT_TYPE, f"{definition.name}, {value!r}", node_id,
                             definition.name, type=kind)
    try:
        converted = converter(value)
        if kind in ("INT", "FLOAT") and isinstance(converted, float) and not math.isfinite(converted):
            raise ValueError("not a finite number")
    except (TypeError, ValueError, OverflowError) as exc:
        return value, _error(NodeErrorType.INVALID_INPUT_TYPE, f"{definition.name}, {value!r}, {exc}", node_id,
                             definition.name, type=kind)
    return converted, None


def _check_range(definition: InputDef, value: Any, node_id: str) -> NodeError | None:
    if definition.type not in ("INT", "FLOAT"):
        return None
    low, high = definition.options.get("min"), definition.options.get("max")
    if low is not None and value < low:
        return _error(NodeErrorType.VALUE_SMALLER_THAN_MIN, definition.name, node_id, definition.name,
                      value=value, min=low)
    if high is not None and value > high:
        return _error(NodeErrorType.VALUE_BIGGER_THAN_MAX, definition.name, node_id, definition.name,
                      value=value, max=high)
    return None


def _check_combo(definition: InputDef, value: Any, node_id: str) -> NodeError | None:
    assert definition.choices is not None
    if value in definition.choices:
        return None
    shown = list(definition.choices[:20]) + (["..."] if len(definition.choices) > 20 else [])
    return _error(NodeErrorType.VALUE_NOT_IN_LIST, f"{definition.name}: {value!r} not in {shown}", node_id,
                  definition.name)


class _Validator:
    """Validates nodes dependencies-first without recursion (graphs of thousands of nodes are fine)."""

    def __init__(self, graph: Graph, registry: NodeRegistry, result: ValidationResult) -> None:
        self.graph, self.registry, self.result = graph, registry, result
        self.valid: dict[str, bool] = {}
        self.state: dict[str, int] = {}  # 1: on the DFS stack, 2: finished
        self.cyclic: set[str] = set()

    def _sources(self, node_id: str) -> list[str]:
        links = self.graph.nodes[node_id].links()
        return [links[name].node_id for name in sorted(links) if links[name].node_id in self.graph.nodes]

    def _post_order(self, root: str) -> list[str]:
        """Nodes `root` depends on, dependencies first; a back edge marks the node that depends on itself."""
        order: list[str] = []
        if self.state.get(root) == 2:
            return order
        self.state[root] = 1
        stack = [(root, iter(self._sources(root)))]
        while stack:
            node_id, pending = stack[-1]
            source = next(pending, None)
            if source is None:
                stack.pop()
                self.state[node_id] = 2
                order.append(node_id)
            elif self.state.get(source, 0) == 0:
                self.state[source] = 1
                stack.append((source, iter(self._sources(source))))
            elif self.state[source] == 1:
                self.cyclic.add(source)
        return order

    def node(self, root: str) -> bool:
        """Validates `root` and everything it depends on (each node once)."""
        for node_id in self._post_order(root):
            node = self.graph.nodes[node_id]
            if node_id in self.cyclic:
                self.result.add(node_id, node.class_type, _error(
                    NodeErrorType.DEPENDENCY_CYCLE, f"node {node_id} depends on itself", node_id))
                self.valid[node_id] = False
                continue
            spec = self.registry.get(node.class_type)
            # An unknown class is reported once for every such node, in validate().
            self.valid[node_id] = spec is not None and self._inputs(node, spec)
        return self.valid.get(root, False)

    def _inputs(self, node: GraphNode, spec: NodeSpec) -> bool:
        ok = True
        definitions = spec.input_defs()
        custom_params: set[str] = set()
        custom_kwargs = False
        if spec.has_validate_inputs:
            custom_params, custom_kwargs = spec.validate_inputs_params
        received_types: dict[str, str] = {}
        for name, definition in definitions.items():
            if definition.category == "hidden":
                continue
            if name not in node.inputs:
                if definition.category == "required":
                    self.result.add(node.node_id, node.class_type, _error(
                        NodeErrorType.REQUIRED_INPUT_MISSING, name, node.node_id, name))
                    ok = False
                continue
            value = node.inputs[name]
            if isinstance(value, Link):
                received = self._link(node, name, definition, value)
                if received is None:
                    ok = False
                else:
                    received_types[name] = received
                continue
            if not definition.accepts_literal and definition.type != ANY_TYPE:
                self.result.add(node.node_id, node.class_type, _error(
                    NodeErrorType.INVALID_INPUT_TYPE, f"{name}: {definition.type} inputs must be linked to the "
                    f"output of another node, not given a value", node.node_id, name, type=definition.type))
                ok = False
                continue
            converted, problem = _convert(definition, value, node.node_id)
            # VALIDATE_INPUTS takes over the built-in checks (and a catalog spec defers what only the node judges)
            if problem is None and name not in custom_params and name not in spec.deferred_inputs:
                problem = _check_combo(definition, converted, node.node_id) if definition.is_combo \
                    else _check_range(definition, converted, node.node_id)
            if problem is not None:
                self.result.add(node.node_id, node.class_type, problem)
                ok = False
            else:
                node.inputs[name] = converted
        if ok and spec.has_validate_inputs:
            ok = self._custom(node, spec, definitions, custom_params, custom_kwargs, received_types)
        return ok

    def _link(self, node: GraphNode, name: str, definition: InputDef, link: Link) -> str | None:
        """Checks a link; returns the type it delivers, or None when it is broken."""
        source = self.graph.nodes.get(link.node_id)
        if source is None:
            self.result.add(node.node_id, node.class_type, _error(
                NodeErrorType.LINK_TO_MISSING_NODE, f"{name}: node {link.node_id!r} does not exist", node.node_id,
                name))
            return None
        source_ok = self.valid.get(link.node_id, False)  # dependencies were validated first
        source_spec = self.registry.get(source.class_type)
        if source_spec is None:
            self.result.add(node.node_id, node.class_type, _error(
                NodeErrorType.MISSING_NODE_TYPE, f"{name}: linked node {link.node_id} has unknown type "
                f"{source.class_type!r}", node.node_id, name))
            return None
        if not 0 <= link.output_index < len(source_spec.return_types):
            self.result.add(node.node_id, node.class_type, _error(
                NodeErrorType.OUTPUT_INDEX_OUT_OF_RANGE, f"{name}: {source.class_type} has "
                f"{len(source_spec.return_types)} output(s), not index {link.output_index}", node.node_id, name))
            return None
        received = source_spec.return_types[link.output_index]
        expected = definition.type
        if not types_compatible(received, expected):
            self.result.add(node.node_id, node.class_type, _error(
                NodeErrorType.RETURN_TYPE_MISMATCH, f"{name}, received_type({received}) mismatch "
                f"input_type({expected})", node.node_id, name))
            return None
        return received if source_ok else None

    def _custom(self, node: GraphNode, spec: NodeSpec, definitions: dict[str, InputDef], params: set[str],
                has_kwargs: bool, received_types: dict[str, str]) -> bool:
        arguments: dict[str, Any] = {}
        for name in definitions:
            if name in params or has_kwargs:
                value = node.inputs.get(name)
                arguments[name] = None if isinstance(value, Link) else value
        if "input_types" in params:
            arguments["input_types"] = received_types
        try:
            outcome = spec.cls.VALIDATE_INPUTS(**{k: v for k, v in arguments.items()  # type: ignore[attr-defined]
                                                  if k in params or has_kwargs})
        except Exception as exc:  # noqa: BLE001 - a node's own validation must not crash validation
            outcome = f"{type(exc).__name__}: {exc}"
        if outcome is True:
            return True
        self.result.add(node.node_id, node.class_type, _error(
            NodeErrorType.CUSTOM_VALIDATION_FAILED, str(outcome), node.node_id))
        return False


def dependencies(graph: Graph, node_id: str) -> set[str]:
    """Every node `node_id` depends on, itself included (cycle-safe)."""
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in graph.nodes:
            continue
        seen.add(current)
        stack.extend(link.node_id for link in graph.nodes[current].links().values())
    return seen


def sort_node_ids(ids: list[str]) -> list[str]:
    """Numeric ids in numeric order (ComfyUI's "3" before "10"), others after, by text."""
    return sorted(ids, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))


def validate(prompt: Any, registry: NodeRegistry) -> tuple[Graph, ValidationResult]:
    """Parses and validates; the returned graph holds converted literal values."""
    graph, shape_errors = parse_graph(prompt)
    result = ValidationResult()
    for error in shape_errors:
        if error.node_id:
            result.add(error.node_id, "", error)
        else:
            result.graph_errors.append(error)
    if result.graph_errors:
        return graph, result
    for node in graph.nodes.values():
        if node.class_type not in registry:
            result.add(node.node_id, node.class_type, _error(
                NodeErrorType.MISSING_NODE_TYPE, f"Node '{node.title or node.node_id}' has unknown type "
                f"{node.class_type!r}", node.node_id))
    outputs = sort_node_ids([n.node_id for n in graph.nodes.values()
                             if (spec := registry.get(n.class_type)) is not None and spec.output_node])
    if not outputs:
        if result.node_errors:  # a malformed or unknown node may have been the output: its error says enough
            return graph, result
        result.graph_errors.append(_error(NodeErrorType.PROMPT_NO_OUTPUTS, "the graph has no output node "
                                          "(e.g. SaveImage or PreviewImage)", ""))
        return graph, result
    validator = _Validator(graph, registry, result)
    for output in outputs:
        (result.runnable_outputs if validator.node(output) else result.skipped_outputs).append(output)
    for output in result.skipped_outputs:
        for node_id in dependencies(graph, output):
            if node_id in result.node_errors:
                result.node_errors[node_id].dependent_outputs.append(output)
    return graph, result
