"""An execution's state transitions: the PostgreSQL row first (the record), then the event for watchers.

Every service that moves an execution (the workflow service at submit and cancel, the execution service's
dispatcher, outcome consumer and reconciler) goes through here, so each transition has one definition:

- the row only moves while it is not terminal (`ExecutionRepository.update_active`), and a terminal event is
  appended only by the caller whose update won, so an execution ends once, with one set of outputs;
- the event is appended after the row is written; if a process dies in between, watchers notice the terminal row
  and synthesise the terminal event from it (see `terminal_event_from_record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.rpc import status_pb2
from prometheus_client import Counter, Histogram

from comfymesh.common.v1 import execution_event_pb2 as pb
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.events import EventLog
from services.execution_store.repository import ExecutionRepository

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
EXECUTIONS_FINISHED = Counter("executions_finished_total", "Executions that reached a terminal state.", ("state",))
EXECUTION_DURATION = Histogram("workflow_execution_duration_seconds",
                               "Run time of the attempt that ended an execution.", buckets=_DURATION_BUCKETS)
QUEUE_TIME = Histogram("workflow_queue_time_seconds", "Time an execution waited in the queue before an attempt "
                       "started.", buckets=_DURATION_BUCKETS)

_STATE_OF_KIND = {"succeeded": ExecutionState.SUCCEEDED, "failed": ExecutionState.FAILED,
                  "cancelled": ExecutionState.CANCELLED}


def _proto_state(state: ExecutionState) -> int:
    return int(pb.ExecutionState.Value(f"EXECUTION_STATE_{state}"))


def error_dict(status: status_pb2.Status) -> dict[str, Any]:
    """A google.rpc.Status as the row stores it (JSON; details keep their type URLs)."""
    return json_format.MessageToDict(status)


def error_status(error: dict[str, Any]) -> status_pb2.Status:
    return json_format.ParseDict(error, status_pb2.Status(), ignore_unknown_fields=True)


def error_reason(error: dict[str, Any] | None) -> str:
    """The ErrorInfo reason inside a stored status, "" when there is none."""
    for detail in (error or {}).get("details", []):
        if str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason", ""))
    return ""


@dataclass(frozen=True)
class CostRates:
    """USD per device-second by device type (a substring of the device name), with a default."""

    rates: tuple[tuple[str, float], ...]
    default: float

    @classmethod
    def parse(cls, text: str) -> CostRates:
        rates: list[tuple[str, float]] = []
        default = 0.0
        for pair in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "default":
                default = float(value)
            else:
                rates.append((name.strip().lower(), float(value)))
        return cls(tuple(rates), default)

    def usd(self, device_type: str, seconds: float) -> float:
        lowered = device_type.lower()
        rate = next((r for name, r in self.rates if name and name in lowered), self.default)
        return round(rate * seconds, 6)


def new_event(record_id: str, attempt: int, state: ExecutionState) -> pb.ExecutionEvent:
    event = pb.ExecutionEvent(execution_id=record_id, attempt=attempt, state=_proto_state(state))  # type: ignore[arg-type]
    event.event_time.GetCurrentTime()
    return event


def terminal_event_from_record(record: ExecutionRecord) -> pb.ExecutionEvent:
    """The terminal event a watcher sends when the row is terminal but its stream has none (or is gone)."""
    event = new_event(record.id, record.attempt_count, record.state)
    if record.end_time is not None:
        event.event_time.FromDatetime(record.end_time)
    if record.state is ExecutionState.SUCCEEDED:
        for output in record.outputs:
            json_format.ParseDict(output, event.succeeded.outputs.add(), ignore_unknown_fields=True)
        for timing in record.node_timings:
            json_format.ParseDict(timing, event.succeeded.node_timings.add(), ignore_unknown_fields=True)
    elif record.state is ExecutionState.FAILED:
        event.failed.error.CopyFrom(error_status(record.error or {}))
    else:
        event.cancelled.reason = str((record.error or {}).get("message", "cancelled"))
    return event


class ExecutionLifecycle:
    def __init__(self, repository: ExecutionRepository, events: EventLog, costs: CostRates) -> None:
        self.repository = repository
        self.events = events
        self.costs = costs

    async def queued(self, record: ExecutionRecord, position: int) -> bool:
        """The first event of every execution (unless the dispatcher already wrote it: see `EventLog.append_first`)."""
        event = new_event(record.id, record.attempt_count, ExecutionState.QUEUED)
        event.queued.priority = record.priority
        event.queued.queue_position = position
        return await self.events.append_first(event) is not None

    async def started(self, record: ExecutionRecord, attempt: int, executor_id: str,
                      event: pb.ExecutionEvent) -> bool:
        """The executor began an attempt: RUNNING, with the queue time of this attempt added up."""
        now = datetime.now(UTC)
        waited = max(0.0, (now - (record.queue_time or record.create_time)).total_seconds())
        moved = await self.repository.update_active(
            record.id, state=ExecutionState.RUNNING, start_time=now, attempt_count=attempt,
            executor_id=executor_id, queue_seconds=record.queue_seconds + waited)
        if moved:
            QUEUE_TIME.observe(waited)
            if attempt == 1:
                await self.queued(record, 0)  # a no-op unless this start overtook the submitter's queued event
            event.started.executor_id = executor_id
            event.started.queue_duration.FromNanoseconds(int(waited * 1e9))
            await self.relay(event, ExecutionState.RUNNING)
        return moved

    async def relay(self, event: pb.ExecutionEvent, state: ExecutionState) -> None:
        event.state = _proto_state(state)  # type: ignore[assignment]
        await self.events.append(event)

    async def retrying(self, execution_id: str, attempt: int, error: status_pb2.Status) -> bool:
        """A retryable failure: QUEUED again (the queue already holds the job), and a retrying event."""
        moved = await self.repository.update_active(execution_id, state=ExecutionState.QUEUED,
                                                    queue_time=datetime.now(UTC))
        if moved:
            event = new_event(execution_id, attempt, ExecutionState.QUEUED)
            event.retrying.error.CopyFrom(error)
            event.retrying.next_attempt = attempt + 1
            await self.events.append(event)
        return moved

    async def finish(self, record: ExecutionRecord, event: pb.ExecutionEvent, *, run_seconds: float = 0.0,
                     device_type: str = "") -> bool:
        """Ends the execution with a terminal event (succeeded, failed or cancelled); False when it had already
        ended (another attempt or a cancel won), in which case nothing is written or appended."""
        kind = event.WhichOneof("kind") or ""
        state = _STATE_OF_KIND[kind]
        values: dict[str, Any] = {"state": state, "end_time": datetime.now(UTC), "run_seconds": run_seconds,
                                  "attempt_count": max(record.attempt_count, event.attempt)}
        if kind == "succeeded":
            values["outputs"] = [json_format.MessageToDict(o, preserving_proto_field_name=True)
                                 for o in event.succeeded.outputs]
            values["node_timings"] = [json_format.MessageToDict(t, preserving_proto_field_name=True)
                                      for t in event.succeeded.node_timings]
        elif kind == "failed":
            values["error"] = error_dict(event.failed.error)
            if event.failed.node_timings:
                values["node_timings"] = [json_format.MessageToDict(t, preserving_proto_field_name=True)
                                          for t in event.failed.node_timings]
        else:
            values["error"] = {"code": 1, "message": event.cancelled.reason or "cancelled"}
        if run_seconds > 0:
            values["device_seconds"] = record.device_seconds + run_seconds
            values["device_type"] = device_type
            values["cost_usd"] = record.cost_usd + self.costs.usd(device_type, run_seconds)
        if not await self.repository.update_active(record.id, **values):
            return False
        EXECUTIONS_FINISHED.labels(str(state)).inc()
        if run_seconds > 0:
            EXECUTION_DURATION.observe(run_seconds)
        event.execution_id = record.id
        await self.relay(event, state)
        return True

    async def fail(self, record: ExecutionRecord, attempt: int, error: status_pb2.Status) -> bool:
        event = new_event(record.id, attempt, ExecutionState.FAILED)
        event.failed.error.CopyFrom(error)
        return await self.finish(record, event)

    async def cancel(self, record: ExecutionRecord, attempt: int, reason: str) -> bool:
        event = new_event(record.id, attempt, ExecutionState.CANCELLED)
        event.cancelled.reason = reason
        return await self.finish(record, event)
