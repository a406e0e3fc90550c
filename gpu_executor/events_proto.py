"""Engine events → comfymesh.common.v1.ExecutionEvent (the executor's transport layer)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from comfymesh.common.v1 import execution_event_pb2 as pb
from comfymesh.common.v1 import value_pb2
from gpu_executor.engine import events
from service_runtime.errors import ERROR_DOMAIN
from service_runtime.transport.graph_codec import value_to_proto

RETRYABLE_REASONS = frozenset({"EXECUTOR_LOST", "OUT_OF_MEMORY"})
# gRPC codes of terminal failures, by reason (the code a caller would have got had it been a unary call).
_CODES = {"WORKFLOW_INVALID": 3, "INPUT_INVALID": 3, "NODE_EXECUTION_FAILED": 13, "EXECUTOR_LOST": 14,
          "OUT_OF_MEMORY": 8, "EXECUTION_TIMEOUT": 4}


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _ui(ui: dict[str, Any]) -> value_pb2.StructValue:
    """UI outputs as exact JSON; values that are not JSON (a custom node's tensors) become their text."""
    safe = json.loads(json.dumps(ui, default=str))
    return value_to_proto(safe).struct_value


def error_status(reason: str, message: str, metadata: dict[str, str]) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return status_pb2.Status(code=_CODES.get(reason, 2), message=message, details=[info])


def timings(items: tuple[events.NodeTiming, ...]) -> list[pb.NodeTiming]:
    return [pb.NodeTiming(node_id=t.node_id, class_type=t.class_type, start_time=_timestamp(t.start_time),
                          duration=_duration(t.seconds), cached=t.cached) for t in items]


def to_proto(event: events.Event, *, execution_id: str, attempt: int, sequence: int, now: float,
             outputs: list[pb.OutputFile] | None = None) -> pb.ExecutionEvent:
    message = pb.ExecutionEvent(event_id=str(sequence), execution_id=execution_id, attempt=attempt,
                                event_time=_timestamp(now), state=pb.EXECUTION_STATE_RUNNING)
    if isinstance(event, events.Started):
        message.started.SetInParent()
    elif isinstance(event, events.NodesCached):
        message.nodes_cached.node_ids.extend(event.node_ids)
    elif isinstance(event, events.NodeStarted):
        message.node_started.CopyFrom(pb.NodeStarted(node_id=event.node_id, class_type=event.class_type))
    elif isinstance(event, events.NodeProgress):
        message.node_progress.CopyFrom(pb.NodeProgress(node_id=event.node_id, value=event.value, max=event.max))
    elif isinstance(event, events.Preview):
        message.preview.CopyFrom(pb.PreviewImage(node_id=event.node_id, content_type=event.content_type,
                                                 data=event.data))
    elif isinstance(event, events.NodeExecuted):
        message.node_executed.CopyFrom(pb.NodeExecuted(node_id=event.node_id, class_type=event.class_type,
                                                       ui=_ui(event.ui), duration=_duration(event.seconds)))
    elif isinstance(event, events.Succeeded):
        message.state = pb.EXECUTION_STATE_SUCCEEDED
        message.succeeded.outputs.extend(outputs or [])
        message.succeeded.node_timings.extend(timings(event.timings))
    elif isinstance(event, events.Failed):
        message.state = pb.EXECUTION_STATE_FAILED
        metadata = {k: v for k, v in {"node_id": event.node_id, "class_type": event.class_type,
                                      "exception_type": event.exception_type}.items() if v}
        message.failed.error.CopyFrom(error_status(event.reason, event.message, metadata))
        message.failed.retryable = event.reason in RETRYABLE_REASONS
        message.failed.node_timings.extend(timings(event.timings))
    elif isinstance(event, events.Cancelled):
        message.state = pb.EXECUTION_STATE_CANCELLED
        message.cancelled.reason = f"interrupted at node {event.node_id}" if event.node_id else "interrupted"
    return message
