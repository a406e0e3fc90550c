"""Shared tails: every watcher of one execution in this process reads from ONE in-memory copy of its stream.

Without this, each event would cost one Redis read per watcher (a thousand watchers of one execution: a thousand
XRANGEs per progress step). A tail loads the stream once when its first watcher arrives, then one task per
watched execution appends what each notification brings (EventFollower) and wakes the watchers, which pick
their events from memory by id. The tail lives while it has watchers.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator

from comfymesh.common.v1 import execution_event_pb2 as pb
from services.execution_store.events import EventFollower, EventLog

READ_BATCH = 1000


def event_key(event_id: str) -> tuple[int, int]:
    millis, _, sequence = event_id.partition("-")
    return int(millis or 0), int(sequence or 0)


class ExecutionTail:
    def __init__(self, events: EventLog, execution_id: str) -> None:
        self._events = events
        self.execution_id = execution_id
        self._keys: list[tuple[int, int]] = []
        self._items: list[pb.ExecutionEvent] = []
        self._last = ""
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.loaded = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """Set at the next append; take it BEFORE reading with `after`, so no append can slip in between."""
        return self._changed

    def after(self, event_id: str) -> list[pb.ExecutionEvent]:
        """The events after `event_id` (all when empty), oldest first."""
        start = bisect.bisect_right(self._keys, event_key(event_id)) if event_id else 0
        return self._items[start:]

    async def refresh(self) -> int:
        """Reads what the stream gained since the last read; returns how many events arrived."""
        async with self._lock:
            added = 0
            while True:
                batch = await self._events.read(self.execution_id, self._last, count=READ_BATCH)
                for event in batch:
                    self._keys.append(event_key(event.event_id))
                    self._items.append(event)
                added += len(batch)
                if batch:
                    self._last = batch[-1].event_id
                if len(batch) < READ_BATCH:
                    break
            self.loaded.set()
            if added:
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()
            return added


class SharedTails:
    def __init__(self, events: EventLog, follower: EventFollower) -> None:
        self._events = events
        self._follower = follower
        self._tails: dict[str, tuple[ExecutionTail, int, asyncio.Task[None]]] = {}

    @contextlib.asynccontextmanager
    async def open(self, execution_id: str) -> AsyncIterator[ExecutionTail]:
        if execution_id in self._tails:
            tail, users, task = self._tails[execution_id]
            self._tails[execution_id] = (tail, users + 1, task)
        else:
            tail = ExecutionTail(self._events, execution_id)
            task = asyncio.create_task(self._follow(tail), name=f"tail-{execution_id}")
            self._tails[execution_id] = (tail, 1, task)
        try:
            await tail.loaded.wait()
            yield tail
        finally:
            tail, users, task = self._tails[execution_id]
            if users > 1:
                self._tails[execution_id] = (tail, users - 1, task)
            else:
                del self._tails[execution_id]
                task.cancel()

    async def _follow(self, tail: ExecutionTail) -> None:
        with self._follower.subscribe(tail.execution_id) as wake:
            while True:
                wake.clear()  # before reading: an append after the read sets it again
                try:
                    await tail.refresh()
                except Exception:  # noqa: BLE001 - Redis hiccup: watchers' timeouts refresh too; retry shortly
                    tail.loaded.set()
                    await asyncio.sleep(0.5)
                    continue
                await wake.wait()
