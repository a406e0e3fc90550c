"""Engine events, delivered to a sink the caller passes in (no global state, no transport in the engine).

They mirror comfymesh.common.v1.ExecutionEvent: the executor service turns them into protos, the local runner
prints them. Exactly one terminal event (Succeeded, Failed or Cancelled) ends every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Started:
    execution_id: str


@dataclass(frozen=True)
class NodesCached:
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class NodeStarted:
    node_id: str
    class_type: str


@dataclass(frozen=True)
class NodeProgress:
    node_id: str
    value: int
    max: int


@dataclass(frozen=True)
class Preview:
    node_id: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class NodeExecuted:
    node_id: str
    class_type: str
    ui: dict[str, Any]
    seconds: float
    cached: bool = False


@dataclass(frozen=True)
class NodeTiming:
    node_id: str
    class_type: str
    start_time: float  # epoch seconds
    seconds: float
    cached: bool


@dataclass(frozen=True)
class OutputRef:
    """A file an output node wrote, in ComfyUI's terms (filename, subfolder, type "output" or "temp")."""

    node_id: str
    filename: str
    subfolder: str
    type: str
    kind: str  # the UI key it came under: "images", "gifs", "audio", "video", "text", ...


@dataclass(frozen=True)
class Succeeded:
    outputs: tuple[OutputRef, ...]
    timings: tuple[NodeTiming, ...]
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id → merged UI output


@dataclass(frozen=True)
class Failed:
    """A node raised (deterministic: not retried) or the engine could not run the graph."""

    reason: str  # an ErrorInfo reason, e.g. NODE_EXECUTION_FAILED or WORKFLOW_INVALID
    message: str
    node_id: str = ""
    class_type: str = ""
    exception_type: str = ""
    traceback: str = ""
    timings: tuple[NodeTiming, ...] = ()
    validation: Any = None  # the ValidationResult when reason is WORKFLOW_INVALID


@dataclass(frozen=True)
class Cancelled:
    node_id: str
    timings: tuple[NodeTiming, ...] = ()


Event = Started | NodesCached | NodeStarted | NodeProgress | Preview | NodeExecuted | Succeeded | Failed | Cancelled
TERMINAL = (Succeeded, Failed, Cancelled)


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class CollectingSink:
    """Keeps every event (tests, and the runner's summary)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def terminal(self) -> Event:
        finals = [e for e in self.events if isinstance(e, TERMINAL)]
        assert len(finals) == 1, f"expected exactly one terminal event, got {finals}"
        return finals[0]
