"""Validation results in ComfyUI's vocabulary (mirrors comfymesh.common.v1.ValidationResult, without protos)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class NodeErrorType(StrEnum):
    MISSING_NODE_TYPE = "missing_node_type"
    REQUIRED_INPUT_MISSING = "required_input_missing"
    RETURN_TYPE_MISMATCH = "return_type_mismatch"
    INVALID_INPUT_TYPE = "invalid_input_type"
    VALUE_SMALLER_THAN_MIN = "value_smaller_than_min"
    VALUE_BIGGER_THAN_MAX = "value_bigger_than_max"
    VALUE_NOT_IN_LIST = "value_not_in_list"
    DEPENDENCY_CYCLE = "dependency_cycle"
    PROMPT_NO_OUTPUTS = "prompt_no_outputs"
    CUSTOM_VALIDATION_FAILED = "custom_validation_failed"
    LINK_TO_MISSING_NODE = "link_to_missing_node"
    OUTPUT_INDEX_OUT_OF_RANGE = "output_index_out_of_range"
    MALFORMED = "malformed"


# ComfyUI's short messages for its own types; ours follow the same style.
MESSAGES = {
    NodeErrorType.MISSING_NODE_TYPE: "Node type not found",
    NodeErrorType.REQUIRED_INPUT_MISSING: "Required input is missing",
    NodeErrorType.RETURN_TYPE_MISMATCH: "Return type mismatch between linked nodes",
    NodeErrorType.INVALID_INPUT_TYPE: "Failed to convert an input value to a {type} value",
    NodeErrorType.VALUE_SMALLER_THAN_MIN: "Value {value} smaller than min of {min}",
    NodeErrorType.VALUE_BIGGER_THAN_MAX: "Value {value} bigger than max of {max}",
    NodeErrorType.VALUE_NOT_IN_LIST: "Value not in list",
    NodeErrorType.DEPENDENCY_CYCLE: "Dependency cycle detected",
    NodeErrorType.PROMPT_NO_OUTPUTS: "Prompt has no outputs",
    NodeErrorType.CUSTOM_VALIDATION_FAILED: "Custom validation failed for node",
    NodeErrorType.LINK_TO_MISSING_NODE: "Input is linked to a node that is not in the graph",
    NodeErrorType.OUTPUT_INDEX_OUT_OF_RANGE: "Input is linked to an output the node does not have",
    NodeErrorType.MALFORMED: "Malformed graph",
}


@dataclass(frozen=True)
class NodeError:
    type: NodeErrorType
    message: str
    details: str
    node_id: str = ""
    input_name: str = ""


@dataclass
class NodeErrors:
    class_type: str
    errors: list[NodeError] = field(default_factory=list)
    dependent_outputs: list[str] = field(default_factory=list)


@dataclass
class ValidationResult:
    """What validation found. Policy: a graph runs only when every output node validates (`valid`); the
    runnable/skipped split tells a caller which outputs a partial run (runner --allow-partial) would produce."""

    graph_errors: list[NodeError] = field(default_factory=list)
    node_errors: dict[str, NodeErrors] = field(default_factory=dict)
    runnable_outputs: list[str] = field(default_factory=list)
    skipped_outputs: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.graph_errors and not self.node_errors and bool(self.runnable_outputs)

    def add(self, node_id: str, class_type: str, error: NodeError) -> None:
        entry = self.node_errors.setdefault(node_id, NodeErrors(class_type))
        if error not in entry.errors:
            entry.errors.append(error)

    def all_errors(self) -> list[NodeError]:
        return [*self.graph_errors, *(e for n in self.node_errors.values() for e in n.errors)]
