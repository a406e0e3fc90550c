"""Live progress of an execution: rich bars on a terminal (one per node, filled by sampler steps), plain lines
otherwise (logs, CI, subprocess pipes), both on stderr so stdout stays the output paths."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from comfymesh.client.events import (
    Cancelled,
    Event,
    Failed,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    NodeStarted,
    Queued,
    Retrying,
    Started,
    Succeeded,
)

PLAIN_STEP_PERCENT = 10  # plain output prints a progress line every 10% of a node's steps


class ProgressView(Protocol):
    """Shows an execution's events as they come."""

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def show(self, event: Event) -> None: ...

    def queue_position(self, position: int) -> None: ...


def _node(node_id: str, class_type: str) -> str:
    return f"node {node_id} ({class_type})" if class_type else f"node {node_id}"


def _ending(event: Event) -> str | None:
    if isinstance(event, Succeeded):
        return f"succeeded: {len(event.outputs)} output(s)"
    if isinstance(event, Failed):
        node = event.error.metadata.get("node_id")
        return f"failed{f' at node {node}' if node else ''}: {event.error}"
    if isinstance(event, Cancelled):
        return f"cancelled{f': {event.reason}' if event.reason else ''}"
    if isinstance(event, Retrying):
        return f"retrying as attempt {event.next_attempt}: {event.error}"
    return None


class PlainProgress:
    """One line per meaningful event; step progress every PLAIN_STEP_PERCENT percent."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._classes: dict[str, str] = {}
        self._printed_step: dict[str, int] = {}
        self._position: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def _print(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False)

    def queue_position(self, position: int) -> None:
        if position != self._position:
            self._position = position
            self._print(f"queued: position {position}")

    def show(self, event: Event) -> None:
        if isinstance(event, Queued):
            self._position = event.queue_position
            self._print(f"queued: position {event.queue_position} (priority {event.priority})")
        elif isinstance(event, Started):
            where = f" on {event.executor_id}" if event.executor_id else ""
            self._print(f"started{where} (attempt {event.attempt}, "
                        f"{event.queue_duration.total_seconds():.1f}s in the queue)")
        elif isinstance(event, NodesCached) and event.node_ids:
            self._print(f"cached: node(s) {', '.join(event.node_ids)}")
        elif isinstance(event, NodeStarted):
            self._classes[event.node_id] = event.class_type
            self._print(f"{_node(event.node_id, event.class_type)} started")
        elif isinstance(event, NodeProgress) and event.max > 0:
            percent = int(100 * event.value / event.max)
            bucket = percent // PLAIN_STEP_PERCENT
            if bucket > self._printed_step.get(event.node_id, -1) or event.value == event.max:
                self._printed_step[event.node_id] = bucket
                self._print(f"{_node(event.node_id, self._classes.get(event.node_id, ''))} "
                            f"step {event.value}/{event.max} ({percent}%)")
        elif isinstance(event, NodeExecuted):
            self._print(f"{_node(event.node_id, event.class_type)} done in {event.duration.total_seconds():.2f}s")
        elif (text := _ending(event)) is not None:
            self._print(text)


class RichProgress:
    """A queue line while queued, then a bar per node (steps for samplers, done/not done otherwise)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=False)
        self._status: TaskID | None = None
        self._nodes: dict[str, TaskID] = {}
        self._running: str | None = None

    def __enter__(self) -> Self:
        self._progress.start()
        self._status = self._progress.add_task("submitted", total=None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def _set_status(self, text: str, *, done: bool = False) -> None:
        if self._status is not None:
            self._progress.update(self._status, description=text, total=1 if done else None,
                                  completed=1 if done else 0)

    def _task(self, node_id: str, class_type: str) -> TaskID:
        if node_id not in self._nodes:
            self._nodes[node_id] = self._progress.add_task(_node(node_id, class_type), total=1)
        return self._nodes[node_id]

    def queue_position(self, position: int) -> None:
        self._set_status(f"queued: position {position}")

    def show(self, event: Event) -> None:
        if isinstance(event, Queued):
            self.queue_position(event.queue_position)
        elif isinstance(event, Started):
            self._set_status(f"running on {event.executor_id or 'an executor'} (attempt {event.attempt})")
        elif isinstance(event, NodesCached):
            for node_id in event.node_ids:
                task = self._task(node_id, "")
                self._progress.update(task, description=f"node {node_id} (cached)", completed=1, total=1)
        elif isinstance(event, NodeStarted):
            self._finish_running()  # the engine runs one node at a time: a new one means the last is done
            self._running = event.node_id
            self._task(event.node_id, event.class_type)
        elif isinstance(event, NodeProgress) and event.max > 0:
            self._progress.update(self._task(event.node_id, ""), completed=event.value, total=event.max)
        elif isinstance(event, NodeExecuted):
            self._task(event.node_id, event.class_type)
            self._running = event.node_id
            self._finish_running()
        elif (text := _ending(event)) is not None:
            if isinstance(event, Succeeded):
                self._finish_running()
            self._set_status(text, done=event.terminal)

    def _finish_running(self) -> None:
        """Fills the bar of the node that was running (only output nodes report `executed`)."""
        if self._running is not None:
            task = self._nodes[self._running]
            total = self._progress.tasks[task].total or 1
            self._progress.update(task, completed=total, total=total)
            self._running = None


def progress_view(console: Console, interactive: bool) -> ProgressView:
    """Bars on a terminal, lines elsewhere."""
    return RichProgress(console) if interactive else PlainProgress(console)
