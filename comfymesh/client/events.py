"""Typed execution events: one frozen dataclass per kind of `comfymesh.common.v1.ExecutionEvent`.

Callers match on the class (`isinstance(event, NodeProgress)` or `match event: case NodeProgress(...)`) instead of
probing a protobuf oneof; `event.raw` keeps the message for anything not lifted here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from comfymesh.client.errors import ComfyMeshError, ExecutionFailedError, execution_failure, from_status
from comfymesh.client.values import struct_to_python
from comfymesh.common.v1 import execution_event_pb2 as pb


class ExecutionState(enum.IntEnum):
    """An execution's life-cycle state (comfymesh.common.v1.ExecutionState)."""

    UNSPECIFIED = pb.EXECUTION_STATE_UNSPECIFIED
    QUEUED = pb.EXECUTION_STATE_QUEUED
    DISPATCHING = pb.EXECUTION_STATE_DISPATCHING
    RUNNING = pb.EXECUTION_STATE_RUNNING
    SUCCEEDED = pb.EXECUTION_STATE_SUCCEEDED
    FAILED = pb.EXECUTION_STATE_FAILED
    CANCELLED = pb.EXECUTION_STATE_CANCELLED

    @property
    def terminal(self) -> bool:
        return self in (ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.CANCELLED)

    @classmethod
    def parse(cls, text: str) -> ExecutionState:
        """`queued`, `QUEUED` or `EXECUTION_STATE_QUEUED`."""
        name = text.strip().upper().removeprefix("EXECUTION_STATE_")
        if name not in cls.__members__ or name == "UNSPECIFIED":
            raise ValueError(f"unknown state {text!r}; states: "
                             + ", ".join(m.lower() for m in cls.__members__ if m != "UNSPECIFIED"))
        return cls[name]


@dataclass(frozen=True)
class Event:
    """What every event carries."""

    event_id: str
    execution_id: str
    time: datetime
    attempt: int
    state: ExecutionState
    raw: pb.ExecutionEvent = field(repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """Whether this event ends the execution (and so the watch)."""
        return False


@dataclass(frozen=True)
class Queued(Event):
    priority: int
    queue_position: int


@dataclass(frozen=True)
class Started(Event):
    executor_id: str
    queue_duration: timedelta


@dataclass(frozen=True)
class NodesCached(Event):
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class NodeStarted(Event):
    node_id: str
    class_type: str


@dataclass(frozen=True)
class NodeProgress(Event):
    node_id: str
    value: int
    max: int


@dataclass(frozen=True)
class NodeExecuted(Event):
    node_id: str
    class_type: str
    ui: dict[str, Any]
    outputs: tuple[pb.OutputFile, ...]
    duration: timedelta


@dataclass(frozen=True)
class Preview(Event):
    node_id: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Retrying(Event):
    error: ComfyMeshError
    next_attempt: int


@dataclass(frozen=True)
class Heartbeat(Event):
    pass


@dataclass(frozen=True)
class Succeeded(Event):
    outputs: tuple[pb.OutputFile, ...]
    node_timings: tuple[pb.NodeTiming, ...]

    @property
    def terminal(self) -> bool:
        return True


@dataclass(frozen=True)
class Failed(Event):
    error: ExecutionFailedError
    retryable: bool

    @property
    def terminal(self) -> bool:
        return True


@dataclass(frozen=True)
class Cancelled(Event):
    reason: str

    @property
    def terminal(self) -> bool:
        return True


@dataclass(frozen=True)
class Unknown(Event):
    """A kind this client version does not know (the server added one); kept so a watch never breaks on it."""

    kind: str


def event_from_proto(message: pb.ExecutionEvent) -> Event:
    """The typed event for a wire event."""
    base: dict[str, Any] = {"event_id": message.event_id, "execution_id": message.execution_id,
                            "time": message.event_time.ToDatetime().replace(tzinfo=UTC), "attempt": message.attempt,
                            "state": _state(message.state), "raw": message}
    kind = message.WhichOneof("kind")
    if kind == "queued":
        return Queued(**base, priority=message.queued.priority, queue_position=message.queued.queue_position)
    if kind == "started":
        return Started(**base, executor_id=message.started.executor_id,
                       queue_duration=message.started.queue_duration.ToTimedelta())
    if kind == "nodes_cached":
        return NodesCached(**base, node_ids=tuple(message.nodes_cached.node_ids))
    if kind == "node_started":
        return NodeStarted(**base, node_id=message.node_started.node_id, class_type=message.node_started.class_type)
    if kind == "node_progress":
        progress = message.node_progress
        return NodeProgress(**base, node_id=progress.node_id, value=progress.value, max=progress.max)
    if kind == "node_executed":
        executed = message.node_executed
        return NodeExecuted(**base, node_id=executed.node_id, class_type=executed.class_type,
                            ui=struct_to_python(executed.ui), outputs=tuple(executed.outputs),
                            duration=executed.duration.ToTimedelta())
    if kind == "preview":
        return Preview(**base, node_id=message.preview.node_id, content_type=message.preview.content_type,
                       data=message.preview.data)
    if kind == "retrying":
        return Retrying(**base, error=from_status(message.retrying.error),
                        next_attempt=message.retrying.next_attempt)
    if kind == "heartbeat":
        return Heartbeat(**base)
    if kind == "succeeded":
        return Succeeded(**base, outputs=tuple(message.succeeded.outputs),
                         node_timings=tuple(message.succeeded.node_timings))
    if kind == "failed":
        return Failed(**base, error=execution_failure(message.failed.error), retryable=message.failed.retryable)
    if kind == "cancelled":
        return Cancelled(**base, reason=message.cancelled.reason)
    return Unknown(**base, kind=kind or "")


def _state(number: int) -> ExecutionState:
    try:
        return ExecutionState(number)
    except ValueError:
        return ExecutionState.UNSPECIFIED

