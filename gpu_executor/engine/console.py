"""Prints engine events for a person at a terminal (the local runner)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from gpu_executor.engine.events import (
    Cancelled,
    Event,
    Failed,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    NodeStarted,
    Preview,
    Started,
    Succeeded,
)


class ConsoleSink:
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self._last_progress: tuple[str, int] | None = None

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.3f}s] {text}", file=self.stream, flush=True)

    def emit(self, event: Event) -> None:
        match event:
            case Started():
                self._print("started")
            case NodesCached(node_ids=ids):
                self._print(f"cached: {', '.join(ids)}")
            case NodeStarted(node_id=node_id, class_type=class_type):
                self._print(f"node {node_id} ({class_type}) started")
            case NodeProgress(node_id=node_id, value=value, max=total):
                width = 30
                filled = int(width * value / total) if total else width
                self._print(f"node {node_id} [{'#' * filled}{'.' * (width - filled)}] {value}/{total}")
            case Preview():
                pass
            case NodeExecuted(node_id=node_id, class_type=class_type, seconds=seconds, cached=cached):
                self._print(f"node {node_id} ({class_type}) {'from cache' if cached else f'done in {seconds:.3f}s'}")
            case Succeeded(outputs=outputs):
                self._print(f"succeeded with {len(outputs)} output file(s)")
            case Failed(reason=reason, message=message):
                self._print(f"failed: {reason}: {message}")
            case Cancelled(node_id=node_id):
                self._print(f"cancelled at node {node_id}")
