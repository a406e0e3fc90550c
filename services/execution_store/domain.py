"""The Execution as the workflow service's domain sees it: plain Python, no generated code."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from service_runtime.transport.graph_codec import Graph


class ExecutionState(StrEnum):
    QUEUED = "QUEUED"
    DISPATCHING = "DISPATCHING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.CANCELLED})


@dataclass
class ExecutionRecord:
    """One execution row. JSON-ish fields hold plain values (dicts/lists) in ComfyUI's and our contract's terms."""

    id: str
    tenant: str
    state: ExecutionState
    graph: Graph
    create_time: datetime
    update_time: datetime
    priority: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    webhook_url: str = ""
    request_id: str | None = None
    queue_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    queue_seconds: float = 0.0
    run_seconds: float = 0.0
    queue_timeout_seconds: float | None = None
    run_timeout_seconds: float | None = None
    node_timings: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None  # {"code": int, "reason": str, "message": str, "metadata": {...}}
    attempt_count: int = 0
    executor_id: str = ""
    last_event_id: str = ""
    device_seconds: float = 0.0
    device_type: str = ""
    cost_usd: float = 0.0
    version: int = 1


@dataclass(frozen=True)
class ExecutionFilter:
    """What ListExecutions narrows by; also the identity of a page-token query."""

    states: tuple[ExecutionState, ...] = ()
    create_time_start: datetime | None = None
    create_time_end: datetime | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def as_query(self) -> dict[str, Any]:
        return {
            "states": sorted(self.states),
            "start": self.create_time_start.isoformat() if self.create_time_start else None,
            "end": self.create_time_end.isoformat() if self.create_time_end else None,
            "labels": sorted(self.labels),
        }
