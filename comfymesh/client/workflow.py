"""ComfyUI API-format workflows (`workflow_api.json`, "Save (API)") and input overrides.

A workflow is `{node_id: {"class_type": ..., "inputs": {...}, "_meta": {"title": ...}}}`. Overrides address a
node by id or by its `_meta.title` and one of its literal inputs: `3.seed=42`, `Positive Prompt.text=a cat`. The
value is parsed as JSON when it parses (`42`, `1.5`, `true`, `[1, 2]`), else taken as a string. Mistakes are
InvalidArgumentError errors that list what exists, so a typo is fixed from the message alone.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import StatusCode

from comfymesh.client.errors import FieldViolation, InvalidArgumentError

Graph = dict[str, dict[str, Any]]


class WorkflowError(InvalidArgumentError):
    """A workflow file or an override the client refuses before anything is sent."""

    def __init__(self, message: str, field: str, reason: str = "INVALID_ARGUMENT") -> None:
        super().__init__(StatusCode.INVALID_ARGUMENT, reason, message,
                         field_violations=(FieldViolation(field, message, reason),), from_server=False)


@dataclass(frozen=True)
class Override:
    """`NODE.INPUT=VALUE`: NODE is a node id or a `_meta.title`."""

    node: str
    input: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Override:
        key, sep, raw = text.partition("=")
        node, dot, name = key.strip().rpartition(".")
        if not sep or not dot or not node.strip() or not name.strip():
            raise WorkflowError(f"override {text!r} is not NODE.INPUT=VALUE (NODE: a node id or title)", "set")
        return cls(node.strip(), name.strip(), parse_value(raw))


def parse_value(raw: str) -> Any:
    """JSON when it parses as JSON (numbers, booleans, null, lists, objects, quoted strings), else the text."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except ValueError:
        return raw


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class Workflow:
    """An API-format workflow graph; overrides return a new Workflow and leave this one as it was."""

    def __init__(self, graph: Mapping[str, Any], *, source: str = "workflow") -> None:
        self._graph = _checked(graph, source)
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        """Reads a `workflow_api.json` file as ComfyUI saved it."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkflowError(f"cannot read {file}: {exc.strerror or exc}", "workflow") from None
        return cls.from_json(text, source=str(file))

    @classmethod
    def from_json(cls, text: str, *, source: str = "workflow") -> Workflow:
        """Parses API-format JSON text (integers stay exact: seeds up to 2^64 - 1 survive)."""
        try:
            value = json.loads(text, parse_constant=_no_constants)
        except json.JSONDecodeError as exc:
            raise WorkflowError(f"{source} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})",
                                "workflow", "WORKFLOW_MALFORMED") from None
        except ValueError as exc:
            raise WorkflowError(f"{source} is not valid JSON ({exc})", "workflow", "WORKFLOW_MALFORMED") from None
        return cls(value, source=source)

    @property
    def graph(self) -> Graph:
        """A copy of the graph in its plain JSON form."""
        return copy.deepcopy(self._graph)

    def to_json(self) -> str:
        """The graph as JSON text, what SubmitExecution's exact `workflow_json` takes."""
        return json.dumps(self._graph, separators=(",", ":"))

    def titles(self) -> dict[str, str]:
        """Node id → `_meta.title`, for the nodes that have one."""
        titles: dict[str, str] = {}
        for node_id, node in self._graph.items():
            title = (node.get("_meta") or {}).get("title")
            if isinstance(title, str) and title:
                titles[node_id] = title
        return titles

    def resolve_node(self, ref: str) -> str:
        """The id of the node `ref` names: an id first, else a unique `_meta.title`."""
        if ref in self._graph:
            return ref
        matches = [node_id for node_id, title in self.titles().items() if title == ref]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise WorkflowError(f"title {ref!r} is ambiguous: nodes {', '.join(sorted(matches))} have it; "
                                "use a node id", "set")
        raise WorkflowError(f"no node {ref!r} in {self.source}; nodes: {self._describe_nodes()}", "set")

    def with_overrides(self, overrides: Iterable[Override | str]) -> Workflow:
        """A new workflow with each override applied in order (a later one wins on the same input)."""
        graph = copy.deepcopy(self._graph)
        updated = Workflow(graph, source=self.source)
        for item in overrides:
            override = item if isinstance(item, Override) else Override.parse(item)
            updated._set(override)
        return updated

    def _set(self, override: Override) -> None:
        node_id = self.resolve_node(override.node)
        node = self._graph[node_id]
        inputs: dict[str, Any] = node["inputs"]
        label = f"node {node_id} ({node['class_type']})"
        if override.input not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise WorkflowError(f"{label} has no input {override.input!r}; inputs: {known}", "set")
        if _is_link(inputs[override.input]):
            source, index = inputs[override.input]
            raise WorkflowError(f"input {override.input!r} of {label} is a link to node {source} output {index}, "
                                "not a value", "set")
        inputs[override.input] = override.value

    def _describe_nodes(self) -> str:
        titles = self.titles()
        return ", ".join(f"{node_id} ({titles[node_id]!r})" if node_id in titles else node_id
                         for node_id in sorted(self._graph, key=_node_order))


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _checked(value: Any, source: str) -> Graph:
    """The graph when it has the API-format shape; the UI format ("Save") gets a message saying what to export."""
    if not isinstance(value, Mapping):
        raise WorkflowError(f"{source}: a workflow is a JSON object of nodes, not {type(value).__name__}",
                            "workflow", "WORKFLOW_MALFORMED")
    if isinstance(value.get("nodes"), list) and "links" in value:
        raise WorkflowError(f"{source} is in ComfyUI's UI format; export it with \"Save (API)\" (workflow_api.json)",
                            "workflow", "WORKFLOW_MALFORMED")
    if not value:
        raise WorkflowError(f"{source} has no nodes", "workflow", "WORKFLOW_MALFORMED")
    graph: Graph = {}
    for node_id, node in value.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise WorkflowError(f"{source}: node {node_id!r} is not an object with a class_type", f"workflow.{node_id}",
                                "WORKFLOW_MALFORMED")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise WorkflowError(f"{source}: inputs of node {node_id!r} are not an object",
                                f"workflow.{node_id}.inputs", "WORKFLOW_MALFORMED")
        graph[str(node_id)] = {**copy.deepcopy(dict(node)), "inputs": copy.deepcopy(dict(inputs))}
    return graph
