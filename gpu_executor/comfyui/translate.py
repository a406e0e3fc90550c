"""One prompt's websocket frames → engine events: a state machine that only ever looks at its own prompt.

ComfyUI broadcasts some frames to every socket: `progress`, `progress_state` and legacy type-1 previews of prompts
posted without a client id reach ours too, and `status` frames count everyone's queue. So every frame is matched on
`prompt_id`; a type-1 preview (which names no prompt) is accepted only while one of this prompt's nodes is running,
and is then attributed to that node. `executing` without a prompt id (what a reconnect replays) is ignored.

`progress` frames become node progress; `progress_state` (the same steps, cumulative) only marks nodes finished, for
their timings.

The translator never ends a run by itself: it records the prompt's outcome (`result`) and the caller (the backend)
fetches the outputs and emits the terminal event. The same machine replays a `/history` entry (history.py), so a
run that lost its socket ends exactly as if every frame had arrived; frames it already saw are not repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from gpu_executor.comfyui.frames import BinaryImage, Frame, Message
from gpu_executor.engine.events import (
    Cancelled,
    Event,
    Failed,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    NodeStarted,
    NodeTiming,
    Preview,
    Started,
)


@dataclass(frozen=True)
class Completed:
    """execution_success: every output node's UI output, by node id."""

    ui: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class WebsocketImage:
    """An image an output node sent over the socket only (ComfyUI's SaveImageWebsocket): an output, not a preview."""

    node_id: str
    content_type: str
    data: bytes


Result = Completed | Failed | Cancelled


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


@dataclass
class PromptTranslator:
    execution_id: str
    prompt_id: str
    graph: dict[str, Any]
    output_classes: Collection[str] = ()  # classes whose binary images are outputs (catalog: output_node)
    clock: Callable[[], float] = time.time
    result: Result | None = None
    idle: bool = False  # `executing null` for this prompt arrived: history is written
    images: list[WebsocketImage] = field(default_factory=list)
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    _started: bool = False
    _cached: set[str] = field(default_factory=set)
    _reported: set[str] = field(default_factory=set)  # nodes whose `executed` was turned into an event
    _running: str | None = None  # the node executing now
    _node_started: dict[str, float] = field(default_factory=dict)
    _timings: dict[str, NodeTiming] = field(default_factory=dict)

    def class_type(self, node_id: str) -> str:
        node = self.graph.get(node_id)
        return str(node.get("class_type", "")) if isinstance(node, dict) else ""

    @property
    def timings(self) -> tuple[NodeTiming, ...]:
        return tuple(self._timings.values())

    @property
    def running_node(self) -> str | None:
        return self._running

    def feed(self, frame: Frame) -> list[Event]:
        """The engine events one frame means for this prompt (none for a stranger's frame)."""
        if self.result is not None and not (isinstance(frame, Message) and frame.type == "executing"):
            return []
        if isinstance(frame, BinaryImage):
            return self._image(frame)
        if frame.prompt_id != self.prompt_id:
            return []
        handler = _HANDLERS.get(frame.type)
        return handler(self, frame.data) if handler is not None else []

    # -- frames ------------------------------------------------------------------------------------

    def _start(self, data: dict[str, Any]) -> list[Event]:
        if self._started:
            return []
        self._started = True
        return [Started(self.execution_id)]

    def _nodes_cached(self, data: dict[str, Any]) -> list[Event]:
        nodes = tuple(str(n) for n in data.get("nodes") or () if str(n) not in self._cached)
        now = self.clock()
        for node_id in nodes:
            self._cached.add(node_id)
            self._timings[node_id] = NodeTiming(node_id, self.class_type(node_id), now, 0.0, True)
        return [*self._start(data), NodesCached(nodes)] if nodes else self._start(data)

    def _executing(self, data: dict[str, Any]) -> list[Event]:
        node = data.get("node")
        if node is None:
            self._close_running()
            self.idle = True
            return []
        node_id = str(node)
        if node_id == self._running or node_id in self._node_started:
            return []
        self._close_running()
        self._running = node_id
        self._node_started[node_id] = self.clock()
        return [*self._start(data), NodeStarted(node_id, self.class_type(node_id))]

    def _progress(self, data: dict[str, Any]) -> list[Event]:
        node = data.get("node")
        if node is None:
            return []
        return [NodeProgress(str(node), _int(data.get("value")), _int(data.get("max")))]

    def _progress_state(self, data: dict[str, Any]) -> list[Event]:
        nodes = data.get("nodes")
        if isinstance(nodes, dict):
            for node_id, state in nodes.items():
                if isinstance(state, dict) and state.get("state") == "finished":
                    self._close(str(node_id))
        return []

    def _executed(self, data: dict[str, Any]) -> list[Event]:
        node = data.get("node")
        output = data.get("output")
        if node is None or str(node) in self._reported:
            return []
        node_id = str(node)
        self._reported.add(node_id)
        ui = output if isinstance(output, dict) else {}
        self.ui[node_id] = ui
        started = self._node_started.get(node_id)
        seconds = max(0.0, self.clock() - started) if started is not None else 0.0
        return [NodeExecuted(node_id, self.class_type(node_id), ui, seconds, cached=node_id in self._cached)]

    def _success(self, data: dict[str, Any]) -> list[Event]:
        self._close_running()
        self.result = Completed(dict(self.ui))
        return []

    def _error(self, data: dict[str, Any]) -> list[Event]:
        self._close_running()
        node_id = str(data.get("node_id") or "")
        node_type = str(data.get("node_type") or self.class_type(node_id))
        exception_type = str(data.get("exception_type") or "")
        message = str(data.get("exception_message") or "").strip()
        trace = data.get("traceback")
        reason = "OUT_OF_MEMORY" if "OutOfMemory" in exception_type else "NODE_EXECUTION_FAILED"
        self.result = Failed(reason, f"node {node_id} ({node_type}) failed: {exception_type}: {message}", node_id,
                             node_type, exception_type,
                             "".join(str(line) for line in trace) if isinstance(trace, list) else "",
                             self.timings)
        return []

    def _interrupted(self, data: dict[str, Any]) -> list[Event]:
        self._close_running()
        self.result = Cancelled(str(data.get("node_id") or ""), self.timings)
        return []

    def _image(self, frame: BinaryImage) -> list[Event]:
        if frame.prompt_id is not None:
            if frame.prompt_id != self.prompt_id:
                return []
            node_id = frame.node_id or self._running
        else:  # type 1: ours only while one of our nodes runs (a stranger's prompt may broadcast them too)
            node_id = self._running
        if node_id is None:
            return []
        if self.class_type(node_id) in self.output_classes:
            self.images.append(WebsocketImage(node_id, frame.content_type, frame.data))
            return []
        return [Preview(node_id, frame.content_type, frame.data)]

    # -- timings -----------------------------------------------------------------------------------

    def _close(self, node_id: str) -> None:
        started = self._node_started.get(node_id)
        if started is not None and node_id not in self._timings:
            self._timings[node_id] = NodeTiming(node_id, self.class_type(node_id), started,
                                                max(0.0, self.clock() - started), False)
        if self._running == node_id:
            self._running = None

    def _close_running(self) -> None:
        if self._running is not None:
            self._close(self._running)


_HANDLERS: dict[str, Callable[[PromptTranslator, dict[str, Any]], list[Event]]] = {
    "execution_start": PromptTranslator._start,
    "execution_cached": PromptTranslator._nodes_cached,
    "executing": PromptTranslator._executing,
    "progress": PromptTranslator._progress,
    "progress_state": PromptTranslator._progress_state,
    "executed": PromptTranslator._executed,
    "execution_success": PromptTranslator._success,
    "execution_error": PromptTranslator._error,
    "execution_interrupted": PromptTranslator._interrupted,
}
