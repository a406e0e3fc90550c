"""WatchExecution: replay an execution's events after a given id, then follow them live, and always end with the
terminal event — also when the stream expired or a process died before appending it (then the terminal event is
rebuilt from the row). Idle streams get a heartbeat event so proxies keep them open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from comfymesh.common.v1 import execution_event_pb2 as pb
from services.execution_store.domain import ExecutionRecord
from services.execution_store.events import EventLog, check_event_id, is_terminal
from services.execution_store.lifecycle import new_event, terminal_event_from_record
from services.execution_store.repository import ExecutionRepository
from services.execution_store.tails import SharedTails
from services.workflow.queries import ExecutionQueries


class ExecutionWatcher:
    def __init__(self, queries: ExecutionQueries, repository: ExecutionRepository, events: EventLog,
                 tails: SharedTails, heartbeat_seconds: float) -> None:
        self._queries = queries
        self._repository = repository
        self._events = events
        self._tails = tails
        self._heartbeat = heartbeat_seconds

    async def watch(self, tenant: str, execution_id: str, after_event_id: str = "", *,
                    include_previews: bool = False) -> AsyncIterator[pb.ExecutionEvent]:
        check_event_id(after_event_id)
        record = await self._queries.get(tenant, execution_id)  # NOT_FOUND for another tenant's id, too
        last = after_event_id
        check_row = True  # at the start and after every quiet heartbeat interval, not after every event
        async with self._tails.open(execution_id) as tail:
            while True:
                changed = tail.changed()
                events = tail.after(last)
                if events:
                    last = events[-1].event_id
                    for event in events:
                        if event.WhichOneof("kind") == "preview" and not include_previews:
                            continue
                        yield event
                        if is_terminal(event):
                            return
                    continue
                if check_row:
                    check_row = False
                    record = await self._repository.get_internal(execution_id) or record
                    if record.state.terminal and not await self._events.has_terminal(execution_id):
                        yield terminal_event_from_record(record)
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self._heartbeat)
                    continue
                check_row = True
                await tail.refresh()  # a notification may have been lost (pub/sub reconnecting)
                if not tail.after(last):
                    yield self._heartbeat_event(record)

    @staticmethod
    def _heartbeat_event(record: ExecutionRecord) -> pb.ExecutionEvent:
        event = new_event(record.id, record.attempt_count, record.state)
        event.heartbeat.SetInParent()
        return event
