"""Resuming a watch: what both clients do when the stream drops before the terminal event.

The server replays everything after `after_event_id` and then follows live, so resuming from the last event seen
neither loses nor repeats events. A drop is a transport failure (UNAVAILABLE, or a reset stream seen as
INTERNAL/UNKNOWN without ErrorInfo) or a stream that ended without a terminal event; a typed server answer such as
NOT_FOUND or PERMISSION_DENIED is final and raised as is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from comfymesh.client.errors import ComfyMeshError, DeadlineExceededError, UnavailableError
from comfymesh.client.events import Event, Heartbeat, event_from_proto
from comfymesh.common.v1 import execution_event_pb2
from comfymesh.workflow.v1 import workflow_service_pb2 as workflow_pb

_TRANSPORT_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class ReconnectPolicy:
    """How hard to try: `max_attempts` reconnections in a row without receiving an event, with backoff."""

    max_attempts: int = 8
    initial_backoff: float = 0.2
    max_backoff: float = 5.0

    def delay(self, failures: int) -> float:
        return float(min(self.max_backoff, self.initial_backoff * 2 ** (failures - 1)))


def is_resumable(error: ComfyMeshError) -> bool:
    """Whether a failed stream is worth resuming: the connection went away, not the server said no."""
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code in _TRANSPORT_CODES and not error.from_server


class WatchCursor:
    """Tracks a watch's position and decides, after each failure, whether and when to reconnect."""

    def __init__(self, execution_id: str, *, after_event_id: str = "", include_previews: bool = False,
                 include_heartbeats: bool = False, policy: ReconnectPolicy | None = None) -> None:
        self.execution_id = execution_id
        self.last_event_id = after_event_id
        self.include_previews = include_previews
        self.include_heartbeats = include_heartbeats
        self.policy = policy or ReconnectPolicy()
        self.finished = False
        self.reconnects = 0
        self._failures = 0

    def request(self) -> workflow_pb.WatchExecutionRequest:
        return workflow_pb.WatchExecutionRequest(id=self.execution_id, after_event_id=self.last_event_id,
                                                 include_previews=self.include_previews)

    def accept(self, message: execution_event_pb2.ExecutionEvent) -> Event | None:
        """The typed event to hand to the caller, or None for one it does not want (or has already seen)."""
        self._failures = 0
        if message.event_id and message.event_id == self.last_event_id:
            return None  # a server replaying its resume point would otherwise repeat it
        event = event_from_proto(message)
        if isinstance(event, Heartbeat):
            # A heartbeat is not in the execution's event log: resuming after its id could skip nothing or
            # everything depending on the server, so the resume point stays at the last real event.
            return event if self.include_heartbeats else None
        if event.event_id:
            self.last_event_id = event.event_id
        self.finished = event.terminal
        return event

    def retry_delay(self, error: ComfyMeshError | None) -> float:
        """Seconds to wait before resuming after `error` (None: the stream ended early); raises when giving up."""
        if error is not None and not is_resumable(error):
            raise error
        self._failures += 1
        if self._failures > self.policy.max_attempts:
            if error is not None:
                raise error
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE",
                              f"the watch of execution {self.execution_id} kept ending before its terminal event",
                              from_server=False)
        self.reconnects += 1
        return self.policy.delay(self._failures)


class Deadline:
    """An optional overall deadline for a watch across reconnections."""

    def __init__(self, execution_id: str, timeout: float | None) -> None:
        self.execution_id = execution_id
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    @property
    def bounded(self) -> bool:
        return self._end is not None

    def remaining(self) -> float | None:
        """Seconds left (None: no deadline); raises DeadlineExceededError when none are."""
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> DeadlineExceededError:
        return DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED",
                                f"execution {self.execution_id} did not finish within {self.timeout:g}s",
                                from_server=False)
