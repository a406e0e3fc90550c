"""From execution events to delivery records: the feed consumer and the fan-out to endpoints.

Every execution event but previews is also appended to one Redis stream, the feed (services/execution_store/
events.py, `EventLog.feed_key`). The webhook workers read it as one consumer group: each entry goes to one
replica, which turns it into delivery rows (one per endpoint that wants the event: the execution's own
`webhook_url`, and every enabled subscription of its tenant whose event types match) and acknowledges the entry
only once the rows are committed. A replica that dies in between leaves the entry pending; it is replayed when the
replica restarts, or claimed by another after `claim_idle_seconds` (XAUTOCLAIM). Replays are harmless: a
delivery's id is derived from the feed entry and the endpoint, so the same event never becomes two deliveries to
one endpoint, and receivers see one `webhook-id` per (event, endpoint).

Progress is opt-in per subscription and throttled: at most one progress delivery per execution and endpoint per
`progress_interval` (a Redis key with that expiry; a lost key only costs one extra progress delivery).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from service_runtime.redis_client import as_text
from services.execution_store.domain import ExecutionRecord
from services.execution_store.repository import ExecutionRepository
from services.webhook.domain import EVENT_TYPE_OF_KIND, Delivery, DeliveryState, EventType, Subscription
from services.webhook.repository import WebhookRepository, endpoint_key

log = logging.getLogger(__name__)
GROUP = "webhook-service"
INITIAL_LOOKBACK_SECONDS = 300
MAX_ENTRY_FAILURES = 5
# Failures of a backing system, not of the entry: never a reason to skip it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, RedisConnectionError, RedisTimeoutError, OperationalError, InterfaceError)
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_HEADER_CACHE_SIZE = 4096
_SUBSCRIPTION_CACHE_SECONDS = 2.0


def delivery_id(entry_id: str, endpoint: str) -> str:
    """32 hex characters: the event's milliseconds (so ids sort by event time, like execution ids), then a hash of
    (feed entry, endpoint). The same event to the same endpoint always gets the same id."""
    millis = int(entry_id.partition("-")[0])
    return f"{millis:012x}" + hashlib.sha256(f"{entry_id}|{endpoint}".encode()).hexdigest()[:20]


class PayloadSource(Protocol):
    async def build(self, record: ExecutionRecord, event_type: EventType, entry_id: str) -> str: ...


class ProgressThrottle:
    """At most one progress delivery per (endpoint, execution) per interval, across replicas."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._redis = client
        self._namespace = namespace

    async def allow(self, endpoint: str, execution_id: str, entry_id: str, interval_seconds: float) -> bool:
        if interval_seconds <= 0:
            return True
        digest = hashlib.sha256(endpoint.encode()).hexdigest()[:16]
        key = f"{self._namespace}:progress:{digest}:{execution_id}"
        if await self._redis.set(key, entry_id, nx=True, px=max(1, int(interval_seconds * 1000))):
            return True
        # The same entry replayed after a crash keeps the slot it had taken.
        held = await self._redis.get(key)
        return held is not None and as_text(held) == entry_id


@dataclass(frozen=True)
class _Target:
    endpoint: str  # "sub:<id>" or "url:<url>": what the delivery id is derived from
    subscription_id: str
    url: str
    progress_interval: float


@dataclass(frozen=True)
class _Header:
    tenant: str
    webhook_url: str


class DeliveryPlanner:
    """Turns one feed entry into delivery rows."""

    def __init__(self, repository: WebhookRepository, executions: ExecutionRepository, payloads: PayloadSource,
                 throttle: ProgressThrottle, *, execution_url_events: Collection[EventType],
                 default_progress_interval: float, round_horizon_seconds: float,
                 on_new: Callable[[], None] = lambda: None) -> None:
        self._repository = repository
        self._executions = executions
        self._payloads = payloads
        self._throttle = throttle
        self._execution_url_events = frozenset(execution_url_events)
        self._default_progress = default_progress_interval
        self._horizon = round_horizon_seconds
        self._on_new = on_new
        self._headers: OrderedDict[str, _Header] = OrderedDict()
        self._subscriptions: dict[str, tuple[float, list[Subscription]]] = {}

    async def _subscriptions_of(self, tenant: str, cached: bool) -> list[Subscription]:
        now = time.monotonic()
        if cached:
            hit = self._subscriptions.get(tenant)
            if hit is not None and now - hit[0] < _SUBSCRIPTION_CACHE_SECONDS:
                return hit[1]
        subscriptions = await self._repository.active_subscriptions(tenant)
        self._subscriptions[tenant] = (now, subscriptions)
        return subscriptions

    def _remember(self, record: ExecutionRecord) -> _Header:
        header = _Header(record.tenant, record.webhook_url)
        self._headers[record.id] = header
        self._headers.move_to_end(record.id)
        while len(self._headers) > _HEADER_CACHE_SIZE:
            self._headers.popitem(last=False)
        return header

    async def handle(self, entry_id: str, fields: dict[bytes, bytes]) -> int:
        """Records the deliveries of one feed entry; returns how many were new."""
        event_type = EVENT_TYPE_OF_KIND.get(fields.get(b"k", b"").decode())
        execution_id = fields.get(b"execution_id", b"").decode()
        if event_type is None or not execution_id:
            return 0
        progress = event_type is EventType.PROGRESS
        record: ExecutionRecord | None = None
        header = self._headers.get(execution_id) if progress else None
        if header is None:
            record = await self._executions.get_internal(execution_id)
            if record is None:
                log.debug("feed entry %s: execution %s is not in this database", entry_id, execution_id)
                return 0
            header = self._remember(record)

        targets: list[_Target] = []
        if header.webhook_url and event_type in self._execution_url_events:
            targets.append(_Target(f"url:{header.webhook_url}", "", header.webhook_url, self._default_progress))
        for subscription in await self._subscriptions_of(header.tenant, cached=progress):
            if subscription.wants(event_type):
                targets.append(_Target(f"sub:{subscription.id}", subscription.id, subscription.url,
                                       subscription.progress_interval_seconds or self._default_progress))
        if progress:
            targets = [t for t in targets
                       if await self._throttle.allow(t.endpoint, execution_id, entry_id, t.progress_interval)]
        if not targets:
            return 0
        if record is None:
            record = await self._executions.get_internal(execution_id)
            if record is None:
                return 0
        payload = await self._payloads.build(record, event_type, entry_id)
        now = datetime.now(UTC)
        expire = now + timedelta(seconds=self._horizon)
        deliveries = [Delivery(id=delivery_id(entry_id, t.endpoint), tenant=header.tenant,
                               subscription_id=t.subscription_id, url=t.url, endpoint_key=endpoint_key(t.url),
                               event_type=event_type, execution_id=execution_id, state=DeliveryState.PENDING,
                               payload_json=payload, next_attempt_time=now, expire_time=expire, create_time=now,
                               update_time=now) for t in targets]
        added = await self._repository.add_deliveries(deliveries)
        if added:
            self._on_new()
        return added


class FeedConsumer:
    """Reads the feed as the consumer group `webhook-service` and acknowledges each entry once handled."""

    def __init__(self, client: redis.Redis, stream: str, handler: Callable[[str, dict[bytes, bytes]], Awaitable[int]],
                 *, consumer: str, claim_idle_seconds: float, block_ms: int = 5000, batch: int = 100) -> None:
        self._redis = client
        self._stream = stream
        self._handler = handler
        self._consumer = consumer
        self._claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        self._block_ms = block_ms
        self._batch = batch
        self._failures: dict[str, int] = {}

    async def ensure_group(self, start: str | None = None) -> None:
        """Creates the group once (it then lives in Redis, so the feed is read on from where the group was, across
        restarts of every replica). First created, it starts `INITIAL_LOOKBACK_SECONDS` back: events of executions
        that started with the platform are sent, a long history is not. `start="0"`: the whole feed, when Redis
        lost the group and the stream with it."""
        if start is None:
            start = f"{max(0, int(time.time() * 1000) - INITIAL_LOOKBACK_SECONDS * 1000)}-0"
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        await self.ensure_group()
        while await self.replay_pending():
            pass
        while True:
            try:
                await self.claim_abandoned()
                await self._drain(">", block_ms=self._block_ms)
            except ResponseError as exc:
                # NOGROUP: Redis lost the group (restarted without persistence); UNBLOCKED: the stream was deleted
                # while we waited on it. Either way the feed starts anew: read it from its start.
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                log.warning("the webhook consumer group on %s is gone (%s); recreating it", self._stream, exc)
                await self.ensure_group("0")

    async def replay_pending(self) -> int:
        """Handles what this consumer read but did not acknowledge (before a crash or a failed entry)."""
        return await self._drain("0")

    async def drain_once(self) -> int:
        """Handles what is new without blocking (tests, and a manual catch-up)."""
        return await self._drain(">")

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Handles and acknowledges one entry. A backing system being unreachable propagates (the loop restarts
        and replays the entry, however long the outage); an entry that fails for another reason
        `MAX_ENTRY_FAILURES` times in a row is logged and skipped, so one bad entry cannot stall the feed."""
        key = entry_id.decode()
        try:
            await self._handler(key, fields)
        except (ValueError, UnicodeDecodeError):
            log.exception("feed entry %s is malformed; skipped", key)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            failures = self._failures.get(key, 0) + 1
            if failures < MAX_ENTRY_FAILURES:
                self._failures[key] = failures
                raise
            log.exception("feed entry %s failed %d times; skipped (its webhooks are not sent)", key, failures)
        self._failures.pop(key, None)
        await self._redis.xack(self._stream, GROUP, entry_id)

    async def _drain(self, start: str, block_ms: int | None = None) -> int:
        reply = cast(list[tuple[bytes, _Entries]], await self._redis.xreadgroup(
            GROUP, self._consumer, {self._stream: start}, count=self._batch, block=block_ms))
        handled = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:  # a pending entry trimmed from the stream comes back without fields
                    await self._handle(entry_id, fields)
                else:
                    await self._redis.xack(self._stream, GROUP, entry_id)
                handled += 1
        return handled

    async def claim_abandoned(self) -> int:
        """Takes over entries another consumer left unacknowledged for `claim_idle_seconds` and handles them."""
        cursor, handled = "0-0", 0
        while True:
            reply = await self._redis.xautoclaim(self._stream, GROUP, self._consumer, self._claim_idle_ms,
                                                 start_id=cursor, count=self._batch)
            cursor = as_text(reply[0])
            for entry_id, fields in reply[1]:
                if fields:
                    await self._handle(entry_id, fields)
                else:
                    await self._redis.xack(self._stream, GROUP, entry_id)
                handled += 1
            if cursor == "0-0":
                return handled
