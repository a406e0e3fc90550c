"""Webhooks as the domain sees them: subscriptions, deliveries and their attempts (plain Python, no generated code).

Event types are the Standard Webhooks `type` strings of the payload ("execution.succeeded", ...). A delivery is one
event for one endpoint; its id is the `webhook-id` header, the same on every attempt and redelivery, so receivers
deduplicate on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class EventType(StrEnum):
    QUEUED = "execution.queued"
    STARTED = "execution.started"
    PROGRESS = "execution.progress"
    SUCCEEDED = "execution.succeeded"
    FAILED = "execution.failed"
    CANCELLED = "execution.cancelled"

    @property
    def short(self) -> str:
        """"succeeded" for "execution.succeeded" (the name settings use)."""
        return self.value.removeprefix("execution.")


TERMINAL_EVENT_TYPES = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED})

# Execution event kinds (the feed's `k` field, services/execution_store/events.py) and the webhook event each
# becomes; retrying, heartbeat and preview become none.
EVENT_TYPE_OF_KIND: dict[str, EventType] = {
    "queued": EventType.QUEUED,
    "started": EventType.STARTED,
    "nodes_cached": EventType.PROGRESS,
    "node_started": EventType.PROGRESS,
    "node_progress": EventType.PROGRESS,
    "node_executed": EventType.PROGRESS,
    "succeeded": EventType.SUCCEEDED,
    "failed": EventType.FAILED,
    "cancelled": EventType.CANCELLED,
}


def parse_event_types(text: str) -> frozenset[EventType]:
    """"succeeded,failed" (short names or full types) → the event types; ValueError for an unknown name."""
    by_name = {t.short: t for t in EventType} | {t.value: t for t in EventType}
    result = set()
    for name in filter(None, (part.strip().lower() for part in text.split(","))):
        if name not in by_name:
            raise ValueError(f"unknown webhook event {name!r}; known: {', '.join(t.short for t in EventType)}")
        result.add(by_name[name])
    return frozenset(result)


class DeliveryState(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    DEAD_LETTERED = "DEAD_LETTERED"


@dataclass
class Subscription:
    id: str
    tenant: str
    url: str
    event_types: frozenset[EventType]
    create_time: datetime
    update_time: datetime
    secret: str
    disabled: bool = False
    disabled_reason: str = ""
    progress_interval_seconds: float = 0.0  # 0: the deployment's default
    previous_secret: str | None = None
    previous_secret_expire_time: datetime | None = None
    request_id: str | None = None
    circuit_open: bool = False  # read-side only: the endpoint's breaker, joined in by queries

    def wants(self, event_type: EventType) -> bool:
        """Empty event types = every terminal event; progress is only ever sent to those who ask for it."""
        if not self.event_types:
            return event_type in TERMINAL_EVENT_TYPES
        return event_type in self.event_types

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, and the rotated-out one while its overlap lasts (both sign: receivers holding
        either verify)."""
        secrets = [self.secret]
        if self.previous_secret and self.previous_secret_expire_time and self.previous_secret_expire_time > now:
            secrets.append(self.previous_secret)
        return secrets

    def old_secret_expire_time(self, now: datetime) -> datetime | None:
        if self.previous_secret and self.previous_secret_expire_time and self.previous_secret_expire_time > now:
            return self.previous_secret_expire_time
        return None


@dataclass(frozen=True)
class SubscriptionChanges:
    """What UpdateSubscription changes (None: unchanged)."""

    url: str | None = None
    event_types: frozenset[EventType] | None = None
    disabled: bool | None = None
    progress_interval_seconds: float | None = None


@dataclass(frozen=True)
class Attempt:
    attempt_time: datetime
    http_status: int  # 0: no response
    latency_seconds: float
    error: str = ""


@dataclass
class Delivery:
    id: str
    tenant: str
    subscription_id: str  # "" for an execution's own webhook_url
    url: str
    endpoint_key: str
    event_type: EventType
    execution_id: str
    state: DeliveryState
    payload_json: str
    next_attempt_time: datetime
    expire_time: datetime  # past it, a delivery still held back by an open circuit is dead-lettered
    create_time: datetime
    update_time: datetime
    attempt_count: int = 0
    round_attempts: int = 0  # attempts in the current round of the retry schedule
    last_http_status: int = 0
    last_error: str = ""
    last_attempt_time: datetime | None = None
    claim_token: str | None = None
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class DeliveryFilter:
    subscription_id: str = ""
    execution_id: str = ""
    state: DeliveryState | None = None

    def as_query(self) -> dict[str, str]:
        return {"subscription_id": self.subscription_id, "execution_id": self.execution_id,
                "state": str(self.state or "")}
