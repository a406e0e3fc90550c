"""ComfyUI's validation answer (POST /prompt → 400) → the engine's WORKFLOW_INVALID failure.

The body is `{"error": {type, message, details, extra_info}, "node_errors": {node id: {errors: [{type, message,
details, extra_info: {input_name, ...}}], dependent_outputs, class_type}}}`. Its error types are ComfyUI's, the
vocabulary the built-in engine's ValidationResult uses too, so the failure carries the same structure (and
ExecutionRunner turns each bad input into a field violation). Not retryable: the graph is wrong everywhere.
"""

from __future__ import annotations

from typing import Any

from gpu_executor.engine.errors import MESSAGES, NodeError, NodeErrors, NodeErrorType, ValidationResult
from gpu_executor.engine.events import Failed

_KNOWN = {member.value for member in NodeErrorType}


def _error_type(value: Any) -> NodeErrorType:
    return NodeErrorType(value) if value in _KNOWN else NodeErrorType.CUSTOM_VALIDATION_FAILED


def validation_result(error: dict[str, Any], node_errors: dict[str, Any], prompt: dict[str, Any]) -> ValidationResult:
    result = ValidationResult()
    for node_id, entry in sorted(node_errors.items(), key=lambda item: str(item[0])):
        if not isinstance(entry, dict):
            continue
        node = prompt.get(node_id)
        class_type = str(entry.get("class_type") or (node.get("class_type", "") if isinstance(node, dict) else ""))
        errors = []
        for item in entry.get("errors") or ():
            if not isinstance(item, dict):
                continue
            extra = item.get("extra_info")
            extra = extra if isinstance(extra, dict) else {}
            kind = _error_type(item.get("type"))
            errors.append(NodeError(kind, str(item.get("message") or MESSAGES[kind]), str(item.get("details") or ""),
                                    str(node_id), str(extra.get("input_name") or "")))
        outputs = [str(o) for o in entry.get("dependent_outputs") or ()]
        result.node_errors[str(node_id)] = NodeErrors(class_type, errors, outputs)
    if not result.node_errors:  # a graph-level refusal (no outputs, an unknown node type, a malformed prompt)
        kind = _error_type(error.get("type"))
        result.graph_errors.append(NodeError(kind, str(error.get("message") or MESSAGES[kind]),
                                             str(error.get("details") or "")))
    return result


def validation_failure(error: dict[str, Any], node_errors: dict[str, Any], prompt: dict[str, Any]) -> Failed:
    result = validation_result(error, node_errors, prompt)
    errors = result.all_errors()
    first = errors[0] if errors else NodeError(NodeErrorType.MALFORMED, "the prompt was rejected", "")
    where = f"node {first.node_id}: " if first.node_id else ""
    class_type = result.node_errors[first.node_id].class_type if first.node_id in result.node_errors else ""
    return Failed("WORKFLOW_INVALID", f"the workflow is invalid: {where}{first.message}"
                  + (f" ({first.details})" if first.details else "")
                  + (f", and {len(errors) - 1} more" if len(errors) > 1 else ""),
                  first.node_id, class_type, validation=result)
