"""The body of a delivery (outbound transport: the only module of the worker that touches generated code).

Standard Webhooks' payload shape:

    {"type": "execution.succeeded", "timestamp": "2026-12-01T10:00:00.123Z",
     "data": {"execution": {...}, "event": {...}}}

`data.execution` is the Execution resource as GetExecution returns it (without the workflow graph), with presigned
output URLs, in proto JSON with the proto field names (`google.protobuf.json_format`), as the row is when the
delivery is recorded. `data.event` is the ExecutionEvent the delivery is about (e.g. the NodeProgress of a progress
delivery, the outputs of a succeeded one), while the execution's event stream still holds it. The body
is fixed when the delivery is recorded, so every attempt and redelivery sends the same bytes; output URLs expire
after `presigned_url_ttl_seconds`, and a receiver that is late can fetch fresh ones with GetExecution.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from services.execution_store.domain import ExecutionRecord
from services.execution_store.events import EventLog
from services.webhook.domain import EVENT_TYPE_OF_KIND, EventType
from services.workflow.convert import add_output_urls, execution_to_proto
from services.workflow.files import WorkflowFiles

# The feed entry is appended in the same transaction as the event, just after it, so the event's stream id has
# the same or an earlier millisecond; it is looked for in this window before the feed entry.
_EVENT_WINDOW_MS = 2000


def event_millis(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


class PayloadBuilder:
    def __init__(self, events: EventLog, files: WorkflowFiles) -> None:
        self._events = events
        self._files = files

    async def _event(self, execution_id: str, event_type: EventType, entry_id: str) -> dict[str, Any] | None:
        """The execution event the feed entry stands for (the latest of its type up to the entry's time)."""
        millis = event_millis(entry_id)
        events = await self._events.read(execution_id, f"{max(0, millis - _EVENT_WINDOW_MS)}-0", count=1000,
                                         include_previews=False)
        for event in reversed(events):
            if event_millis(event.event_id) <= millis and \
                    EVENT_TYPE_OF_KIND.get(event.WhichOneof("kind") or "") is event_type:
                return _message_dict(event)
        return None

    async def build(self, record: ExecutionRecord, event_type: EventType, entry_id: str) -> str:
        """The JSON body for the feed entry `entry_id` (an event of `event_type` of the execution `record`)."""
        message = execution_to_proto(record, include_graph=False)
        add_output_urls(message, await self._files.presigned_urls(record))
        message.last_event_id = await self._events.last_event_id(record.id) or record.last_event_id
        data: dict[str, Any] = {"execution": _message_dict(message)}
        event = await self._event(record.id, event_type, entry_id)
        if event is not None:
            data["event"] = event
        event_time = datetime.fromtimestamp(event_millis(entry_id) / 1000, UTC)
        payload = {"type": str(event_type), "timestamp": _rfc3339(event_time), "data": data}
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _message_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def _rfc3339(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
