"""Every execution's events, in one Redis stream per execution: the relay appends, watchers replay and follow.

The stream entry id *is* the event id clients see (`ExecutionEvent.event_id`): Redis makes it monotonic per
stream, so `WatchExecution(after_event_id=...)` resumes exactly after the last event a client saw, across attempts
and across restarts of any service. Streams are capped (`event_stream_max_len`, oldest trimmed first) and expire
`event_retention_seconds` after their terminal event; the PostgreSQL row stays the record of how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from typing import cast

import redis.asyncio as redis

from comfymesh.common.v1 import execution_event_pb2 as pb
from service_runtime.errors import FieldViolation, invalid_argument

log = logging.getLogger(__name__)
EVENT_ID_PATTERN = re.compile(r"^\d{1,20}-\d{1,20}$")
TERMINAL_KINDS = frozenset({"succeeded", "failed", "cancelled"})
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
FEED_MAX_LEN = 100_000
# KEYS: stream, feed. ARGV: event, kind, max len, terminal?, retention, to feed?, execution id, state, attempt,
# feed max len, notify channel, only if the stream is empty?
_APPEND_SCRIPT = """
if ARGV[12] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1], 'k', ARGV[2])
if ARGV[4] == '1' then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
if ARGV[6] == '1' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'execution_id', ARGV[7], 'k', ARGV[2],
             'state', ARGV[8], 'attempt', ARGV[9])
end
redis.call('PUBLISH', ARGV[11], ARGV[7])
return id
"""
_FIELD_EVENT = b"e"
_FIELD_KIND = b"k"


def is_terminal(event: pb.ExecutionEvent) -> bool:
    return event.WhichOneof("kind") in TERMINAL_KINDS


def check_event_id(value: str, field: str = "after_event_id") -> None:
    if value and not EVENT_ID_PATTERN.match(value):
        raise invalid_argument(f"{field} must be an event id from a previous event (like '1733500000000-0')",
                               FieldViolation(field, f"{value[:64]!r} is not an event id", "INVALID_EVENT_ID"))


class EventLog:
    def __init__(self, client: redis.Redis, *, max_len: int, retention_seconds: int,
                 namespace: str = "cm:ev") -> None:
        self._redis = client
        self._max_len = max_len
        self._retention = retention_seconds
        self._namespace = namespace
        self._script = client.register_script(_APPEND_SCRIPT)

    @property
    def feed_key(self) -> str:
        """One stream of every execution's events but previews, as {execution_id, k (kind), state (the
        ExecutionState number), attempt}; the event itself stays in the execution's stream (same order)."""
        return f"{self._namespace}:feed"

    @property
    def notify_channel(self) -> str:
        """Every append publishes the execution id here, so followers wake without polling (EventFollower)."""
        return f"{self._namespace}:notify"

    def key(self, execution_id: str) -> str:
        return f"{self._namespace}:{execution_id}"

    async def append(self, event: pb.ExecutionEvent) -> str:
        """Appends an event (its event_id is replaced by the stream's) and returns the new id.

        One round trip: the stream entry, the retention clock (terminal events), the fleet-wide feed entry and the
        notification for followers are one atomic script.
        """
        event_id = await self._append(event, only_if_empty=False)
        assert event_id is not None
        return event_id

    async def append_first(self, event: pb.ExecutionEvent) -> str | None:
        """Appends the event only if the execution's stream has none yet (None otherwise).

        The queued event must come first, but the submitter appends it after enqueueing, and a fast dispatcher
        could append `started` in between: both sides append the queued event with this before anything else,
        and whichever comes second does nothing.
        """
        return await self._append(event, only_if_empty=True)

    async def _append(self, event: pb.ExecutionEvent, *, only_if_empty: bool) -> str | None:
        event.event_id = ""
        kind = event.WhichOneof("kind") or ""
        reply = await self._script(
            keys=[self.key(event.execution_id), self.feed_key],
            args=[event.SerializeToString(), kind, self._max_len, int(kind in TERMINAL_KINDS), self._retention,
                  int(kind != "preview"), event.execution_id, int(event.state), event.attempt, FEED_MAX_LEN,
                  self.notify_channel, int(only_if_empty)])
        if reply is None:
            return None
        event_id = reply.decode() if isinstance(reply, bytes) else str(reply)
        event.event_id = event_id
        return event_id

    async def read(self, execution_id: str, after: str = "", *, count: int = 500,
                   include_previews: bool = True) -> list[pb.ExecutionEvent]:
        """Events strictly after `after` (from the start when empty), oldest first."""
        start = f"({after}" if after else "-"
        entries = cast(_Entries, await self._redis.xrange(self.key(execution_id), min=start, max="+", count=count))
        return _decode(entries, include_previews)

    async def wait(self, execution_id: str, after: str, *, block_seconds: float, count: int = 500,
                   include_previews: bool = True) -> tuple[list[pb.ExecutionEvent], str]:
        """Blocks until events arrive after `after` (or the time is up). Returns them and the id to resume after,
        which advances past skipped previews too."""
        reply = cast(list[tuple[bytes, _Entries]], await self._redis.xread(
            {self.key(execution_id): after or "0-0"}, count=count, block=max(1, int(block_seconds * 1000))))
        if not reply:
            return [], after
        entries = reply[0][1]
        last = entries[-1][0].decode() if entries else after
        return _decode(entries, include_previews), last

    async def last_event_id(self, execution_id: str) -> str:
        entries = cast(_Entries, await self._redis.xrevrange(self.key(execution_id), count=1))
        return entries[0][0].decode() if entries else ""

    async def has_terminal(self, execution_id: str) -> bool:
        entries = cast(_Entries, await self._redis.xrevrange(self.key(execution_id), count=1))
        return bool(entries) and entries[0][1].get(_FIELD_KIND, b"").decode() in TERMINAL_KINDS


def _decode(entries: _Entries, include_previews: bool) -> list[pb.ExecutionEvent]:
    events = []
    for entry_id, fields in entries:
        if not include_previews and fields.get(_FIELD_KIND) == b"preview":
            continue
        event = pb.ExecutionEvent.FromString(fields[_FIELD_EVENT])
        event.event_id = entry_id.decode()
        events.append(event)
    return events


class EventFollower:
    """Wakes this process's watchers when their execution's stream grows, over ONE Redis pub/sub connection.

    A watcher blocking in XREAD would hold a pooled connection per open stream; with this, thousands of watch
    streams cost one connection. Notifications are hints: a watcher re-reads the stream after each wake-up and
    also on its own timeout, so a notification lost while the connection is re-established costs only delay.
    """

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._redis = client
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def subscribe(self, execution_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the execution's stream may have grown; register it before reading the stream."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="event-follower")
        wake = asyncio.Event()
        self._waiters.setdefault(execution_id, set()).add(wake)
        try:
            yield wake
        finally:
            waiters = self._waiters.get(execution_id)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[execution_id]

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    data = message.get("data")
                    execution_id = data.decode() if isinstance(data, bytes) else str(data)
                    for wake in self._waiters.get(execution_id, ()):
                        wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; watchers fall back to their timeouts meanwhile
                log.warning("event notifications interrupted (%s); reconnecting", exc)
                for waiters in list(self._waiters.values()):
                    for wake in waiters:
                        wake.set()
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
