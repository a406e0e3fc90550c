"""Domain ⇄ proto for the workflow service (transport layer only): executions, validation results, output URLs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.rpc import status_pb2

from comfymesh.common.v1 import execution_event_pb2, validation_pb2
from comfymesh.workflow.v1 import execution_pb2
from service_runtime.transport.graph_codec import graph_to_proto
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.workflow.files import PresignedUrl
from services.workflow.validation import ValidationIssue, WorkflowValidation


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def state_to_proto(state: ExecutionState) -> int:
    return int(execution_event_pb2.ExecutionState.Value(f"EXECUTION_STATE_{state}"))


def state_from_proto(value: int) -> ExecutionState:
    name = execution_event_pb2.ExecutionState.Name(value)  # type: ignore[arg-type]
    return ExecutionState(name.removeprefix("EXECUTION_STATE_"))


def _error(error: dict[str, Any]) -> status_pb2.Status:
    return json_format.ParseDict(error, status_pb2.Status(), ignore_unknown_fields=True)


def execution_to_proto(record: ExecutionRecord, *, include_graph: bool = True) -> execution_pb2.Execution:
    message = execution_pb2.Execution(
        name=f"executions/{record.id}", id=record.id, state=state_to_proto(record.state),  # type: ignore[arg-type]
        priority=record.priority, webhook_url=record.webhook_url, labels=record.labels, tenant=record.tenant,
        attempt_count=record.attempt_count, executor_id=record.executor_id, last_event_id=record.last_event_id,
    )
    if include_graph:
        message.graph.CopyFrom(graph_to_proto(record.graph))
    timings = message.timings
    for name in ("create_time", "queue_time", "start_time", "end_time"):
        stamp = _timestamp(getattr(record, name))
        if stamp is not None:
            getattr(timings, name).CopyFrom(stamp)
    timings.queue_duration.CopyFrom(_duration(record.queue_seconds))
    timings.run_duration.CopyFrom(_duration(record.run_seconds))
    if record.queue_timeout_seconds is not None:
        message.queue_timeout.CopyFrom(_duration(record.queue_timeout_seconds))
    if record.run_timeout_seconds is not None:
        message.run_timeout.CopyFrom(_duration(record.run_timeout_seconds))
    for item in record.inputs:
        added = message.inputs.add(name=item.get("name", ""), content_type=item.get("content_type", ""),
                                   sha256=item.get("sha256", ""))
        if item.get("object_key"):
            added.object_key = item["object_key"]
        elif item.get("url"):
            added.url = item["url"]
    for timing in record.node_timings:
        json_format.ParseDict(timing, message.node_timings.add(), ignore_unknown_fields=True)
    for output in record.outputs:
        json_format.ParseDict(output, message.outputs.add(), ignore_unknown_fields=True)
    if record.error:
        message.error.CopyFrom(_error(record.error))
    message.cost.device_seconds = record.device_seconds
    message.cost.device_type = record.device_type
    message.cost.amount_usd = record.cost_usd
    return message


def add_output_urls(message: execution_pb2.Execution, urls: Mapping[str, PresignedUrl]) -> None:
    """Fills `url` and `url_expire_time` of every output whose object key has a presigned URL."""
    for output in message.outputs:
        link = urls.get(output.object_key)
        if link is not None:
            output.url = link.url
            output.url_expire_time.FromDatetime(link.expire_time)


def _node_error(issue: ValidationIssue) -> validation_pb2.NodeError:
    try:
        kind = validation_pb2.NodeErrorType.Value(f"NODE_ERROR_TYPE_{issue.type.upper()}")
    except ValueError:  # a type the contract does not list yet: type_name still says which
        kind = validation_pb2.NODE_ERROR_TYPE_UNSPECIFIED
    return validation_pb2.NodeError(type=kind, type_name=issue.type, message=issue.message, details=issue.details,
                                    input_name=issue.input_name, node_id=issue.node_id)


def validation_to_proto(result: WorkflowValidation) -> validation_pb2.ValidationResult:
    message = validation_pb2.ValidationResult(
        valid=result.valid, graph_errors=[_node_error(e) for e in result.graph_errors],
        runnable_output_node_ids=result.runnable_outputs, skipped_output_node_ids=result.skipped_outputs)
    for node_id, entry in result.node_errors.items():
        message.node_errors[node_id].CopyFrom(validation_pb2.NodeErrors(
            class_type=entry.class_type, errors=[_node_error(e) for e in entry.errors],
            dependent_output_node_ids=entry.dependent_outputs))
    return message
