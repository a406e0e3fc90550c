"""The graph model: a ComfyUI API-format prompt parsed into nodes whose inputs are literals or links.

Parsing never raises: anything that is not the expected shape becomes a `malformed` error at its place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpu_executor.engine.errors import MESSAGES, NodeError, NodeErrorType


@dataclass(frozen=True)
class Link:
    node_id: str
    output_index: int


@dataclass
class GraphNode:
    node_id: str
    class_type: str
    inputs: dict[str, Any]  # literal values or Link
    title: str = ""

    def links(self) -> dict[str, Link]:
        return {name: value for name, value in self.inputs.items() if isinstance(value, Link)}


@dataclass
class Graph:
    nodes: dict[str, GraphNode] = field(default_factory=dict)
    prompt: dict[str, Any] = field(default_factory=dict)  # the original API-format graph (for SaveImage's PNGs)


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _malformed(details: str, node_id: str = "", input_name: str = "") -> NodeError:
    return NodeError(NodeErrorType.MALFORMED, MESSAGES[NodeErrorType.MALFORMED], details, node_id, input_name)


def parse_graph(prompt: Any) -> tuple[Graph, list[NodeError]]:
    """Builds the graph from API-format JSON values; returns it with every shape problem found."""
    errors: list[NodeError] = []
    graph = Graph()
    if not isinstance(prompt, dict):
        return graph, [_malformed(f"a workflow is a JSON object of nodes, not {type(prompt).__name__}")]
    graph.prompt = prompt
    for raw_id, node in prompt.items():
        node_id = str(raw_id)
        if not isinstance(node, dict):
            errors.append(_malformed("a node must be a JSON object", node_id))
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            errors.append(_malformed("class_type must be a non-empty string", node_id))
            continue
        raw_inputs = node.get("inputs", {})
        if not isinstance(raw_inputs, dict):
            errors.append(_malformed("inputs must be a JSON object", node_id))
            continue
        inputs: dict[str, Any] = {}
        for name, value in raw_inputs.items():
            inputs[str(name)] = Link(value[0], value[1]) if _is_link(value) else value
        meta = node.get("_meta")
        title = meta.get("title", "") if isinstance(meta, dict) else ""
        graph.nodes[node_id] = GraphNode(node_id, class_type, inputs, str(title))
    return graph, errors
