"""Webhook state in SQL (SQLite or PostgreSQL through the same code): subscriptions, deliveries, attempts, circuits.

The deliveries table *is* the delivery queue: a worker claims due rows (PENDING, next attempt due, no live lease)
with `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so several replicas share the work, and stamps them with a
lease and a claim token; it writes the outcome back only while its token still holds. A worker that dies leaves
the lease to expire and the row is claimed again: nothing is kept only in memory.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from service_runtime.db import Base, Database, UtcDateTime
from services.webhook.breaker import Admission, BreakerPolicy, Circuit, CircuitState
from services.webhook.domain import (
    Attempt,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    EventType,
    Subscription,
    SubscriptionChanges,
)

_PENDING = str(DeliveryState.PENDING)


class SubscriptionRow(Base):
    """Mirrors migration 0003_webhooks."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    event_types_json: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str] = mapped_column(Text)
    progress_interval_seconds: Mapped[float] = mapped_column(Float)
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    previous_secret_expire_time = mapped_column(UtcDateTime, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)
    update_time = mapped_column(UtcDateTime, nullable=False)


class DeliveryRow(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    subscription_id: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    endpoint_key: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(32))
    execution_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    payload_json: Mapped[str] = mapped_column(Text)
    attempt_count: Mapped[int] = mapped_column(Integer)
    round_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_time = mapped_column(UtcDateTime, nullable=False)
    expire_time = mapped_column(UtcDateTime, nullable=False)
    lease_until = mapped_column(UtcDateTime, nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_http_status: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    last_attempt_time = mapped_column(UtcDateTime, nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)
    update_time = mapped_column(UtcDateTime, nullable=False)


class AttemptRow(Base):
    __tablename__ = "webhook_delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(32), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempt_time = mapped_column(UtcDateTime, nullable=False)
    http_status: Mapped[int] = mapped_column(Integer)
    latency_seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str] = mapped_column(Text)


class CircuitRow(Base):
    __tablename__ = "webhook_circuits"

    endpoint_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    open_until = mapped_column(UtcDateTime, nullable=True)
    probe_until = mapped_column(UtcDateTime, nullable=True)
    update_time = mapped_column(UtcDateTime, nullable=False)


# --- rows ⇄ domain ---------------------------------------------------------------------------------------------


def _subscription(row: SubscriptionRow, circuit_open: bool = False) -> Subscription:
    return Subscription(
        id=row.id, tenant=row.tenant, url=row.url,
        event_types=frozenset(EventType(t) for t in json.loads(row.event_types_json)),
        create_time=row.create_time, update_time=row.update_time, secret=row.secret, disabled=row.disabled,
        disabled_reason=row.disabled_reason, progress_interval_seconds=row.progress_interval_seconds,
        previous_secret=row.previous_secret, previous_secret_expire_time=row.previous_secret_expire_time,
        request_id=row.request_id, circuit_open=circuit_open)


def _event_types_json(event_types: Iterable[EventType]) -> str:
    return json.dumps(sorted(str(t) for t in event_types))


def _delivery(row: DeliveryRow, attempts: Sequence[AttemptRow] = ()) -> Delivery:
    return Delivery(
        id=row.id, tenant=row.tenant, subscription_id=row.subscription_id, url=row.url,
        endpoint_key=row.endpoint_key, event_type=EventType(row.event_type), execution_id=row.execution_id,
        state=DeliveryState(row.state), payload_json=row.payload_json, next_attempt_time=row.next_attempt_time,
        expire_time=row.expire_time, create_time=row.create_time, update_time=row.update_time,
        attempt_count=row.attempt_count, round_attempts=row.round_attempts, last_http_status=row.last_http_status,
        last_error=row.last_error, last_attempt_time=row.last_attempt_time, claim_token=row.claim_token,
        attempts=[Attempt(a.attempt_time, a.http_status, a.latency_seconds, a.error) for a in attempts])


def _delivery_row(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id, "tenant": delivery.tenant, "subscription_id": delivery.subscription_id,
        "url": delivery.url, "endpoint_key": delivery.endpoint_key, "event_type": str(delivery.event_type),
        "execution_id": delivery.execution_id, "state": str(delivery.state), "payload_json": delivery.payload_json,
        "attempt_count": delivery.attempt_count, "round_attempts": delivery.round_attempts,
        "next_attempt_time": delivery.next_attempt_time, "expire_time": delivery.expire_time, "lease_until": None,
        "claim_token": None, "last_http_status": delivery.last_http_status, "last_error": delivery.last_error,
        "last_attempt_time": delivery.last_attempt_time, "create_time": delivery.create_time,
        "update_time": delivery.update_time,
    }


def _circuit(row: CircuitRow) -> Circuit:
    return Circuit(row.endpoint_key, CircuitState(row.state), row.consecutive_failures, row.open_until,
                   row.probe_until)


class WebhookRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _insert(self, table: Any) -> Any:
        """INSERT with ON CONFLICT support for the database in use."""
        return postgresql.insert(table) if self._db.dialect == "postgresql" else sqlite.insert(table)

    async def _open_endpoints(self, session: AsyncSession, keys: Iterable[str]) -> set[str]:
        wanted = list(set(keys))
        if not wanted:
            return set()
        rows = (await session.execute(select(CircuitRow.endpoint_key).where(
            CircuitRow.endpoint_key.in_(wanted), CircuitRow.state != str(CircuitState.CLOSED)))).scalars().all()
        return set(rows)

    # --- subscriptions -----------------------------------------------------------------------------------------

    async def add_subscription(self, subscription: Subscription) -> Subscription:
        """Inserts; with a request_id already used by the tenant, returns that subscription instead."""
        row = SubscriptionRow(
            id=subscription.id, tenant=subscription.tenant, url=subscription.url,
            event_types_json=_event_types_json(subscription.event_types), disabled=subscription.disabled,
            disabled_reason=subscription.disabled_reason,
            progress_interval_seconds=subscription.progress_interval_seconds, secret=subscription.secret,
            previous_secret=None, previous_secret_expire_time=None, request_id=subscription.request_id,
            create_time=subscription.create_time, update_time=subscription.update_time)
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            if subscription.request_id is None:
                raise
            existing = await self.get_subscription_by_request_id(subscription.tenant, subscription.request_id)
            if existing is None:
                raise
            return existing
        return subscription

    async def get_subscription_by_request_id(self, tenant: str, request_id: str) -> Subscription | None:
        async with self._db.session() as session:
            row = (await session.execute(select(SubscriptionRow).where(
                SubscriptionRow.tenant == tenant, SubscriptionRow.request_id == request_id))).scalar_one_or_none()
            return _subscription(row) if row is not None else None

    async def get_subscription(self, tenant: str, subscription_id: str) -> Subscription | None:
        async with self._db.session() as session:
            row = await session.get(SubscriptionRow, subscription_id)
            if row is None or row.tenant != tenant:
                return None
            return _subscription(row, bool(await self._open_endpoints(session, [endpoint_key(row.url)])))

    async def get_subscription_internal(self, subscription_id: str) -> Subscription | None:
        async with self._db.session() as session:
            row = await session.get(SubscriptionRow, subscription_id)
            return _subscription(row) if row is not None else None

    async def list_subscriptions(self, tenant: str, *, after_id: str | None, limit: int
                                 ) -> tuple[builtins.list[Subscription], str | None]:
        """Oldest first; the page and the cursor of the next one (None at the end)."""
        query = select(SubscriptionRow).where(SubscriptionRow.tenant == tenant)
        if after_id is not None:
            query = query.where(SubscriptionRow.id > after_id)
        async with self._db.session() as session:
            rows = (await session.execute(query.order_by(SubscriptionRow.id).limit(limit + 1))).scalars().all()
            page = rows[:limit]
            opened = await self._open_endpoints(session, (endpoint_key(r.url) for r in page))
            result = [_subscription(r, endpoint_key(r.url) in opened) for r in page]
        return result, (page[-1].id if len(rows) > limit else None)

    async def active_subscriptions(self, tenant: str) -> builtins.list[Subscription]:
        """The tenant's enabled subscriptions (the feed consumer's fan-out)."""
        async with self._db.session() as session:
            rows = (await session.execute(select(SubscriptionRow).where(
                SubscriptionRow.tenant == tenant, SubscriptionRow.disabled.is_(False)))).scalars().all()
            return [_subscription(r) for r in rows]

    async def update_subscription(self, tenant: str, subscription_id: str, changes: SubscriptionChanges,
                                  now: datetime) -> Subscription | None:
        async with self._db.session() as session:
            row = await session.get(SubscriptionRow, subscription_id, with_for_update=True)
            if row is None or row.tenant != tenant:
                return None
            if changes.url is not None:
                row.url = changes.url
            if changes.event_types is not None:
                row.event_types_json = _event_types_json(changes.event_types)
            if changes.progress_interval_seconds is not None:
                row.progress_interval_seconds = changes.progress_interval_seconds
            if changes.disabled is not None:
                if row.disabled and not changes.disabled:
                    # Resumed: what was held back while it was disabled goes out now.
                    row.disabled_reason = ""
                    await session.execute(update(DeliveryRow).where(
                        DeliveryRow.subscription_id == subscription_id, DeliveryRow.state == _PENDING,
                        DeliveryRow.claim_token.is_(None)).values(next_attempt_time=now))
                row.disabled = changes.disabled
            if changes.url is not None:
                # Deliveries not yet made go to the new URL.
                await session.execute(update(DeliveryRow).where(
                    DeliveryRow.subscription_id == subscription_id, DeliveryRow.state == _PENDING).values(
                    url=changes.url, endpoint_key=endpoint_key(changes.url)))
            row.update_time = now
            await session.flush()
            return _subscription(row, bool(await self._open_endpoints(session, [endpoint_key(row.url)])))

    async def disable_subscription(self, subscription_id: str, reason: str, now: datetime) -> None:
        async with self._db.session() as session:
            await session.execute(update(SubscriptionRow).where(SubscriptionRow.id == subscription_id).values(
                disabled=True, disabled_reason=reason, update_time=now))

    async def rotate_secret(self, tenant: str, subscription_id: str, new_secret: str, overlap_until: datetime | None,
                            now: datetime) -> Subscription | None:
        """The new secret signs from now on; the old one too until `overlap_until` (None: not at all)."""
        async with self._db.session() as session:
            row = await session.get(SubscriptionRow, subscription_id, with_for_update=True)
            if row is None or row.tenant != tenant:
                return None
            row.previous_secret = row.secret if overlap_until is not None else None
            row.previous_secret_expire_time = overlap_until
            row.secret = new_secret
            row.update_time = now
            await session.flush()
            return _subscription(row)

    async def delete_subscription(self, tenant: str, subscription_id: str, now: datetime) -> bool:
        """Deletes it; its pending deliveries are dead-lettered (the log keeps them)."""
        async with self._db.session() as session:
            row = await session.get(SubscriptionRow, subscription_id, with_for_update=True)
            if row is None or row.tenant != tenant:
                return False
            await session.execute(update(DeliveryRow).where(
                DeliveryRow.subscription_id == subscription_id, DeliveryRow.state == _PENDING).values(
                state=str(DeliveryState.DEAD_LETTERED), last_error="the subscription was deleted", lease_until=None,
                claim_token=None, update_time=now))
            await session.delete(row)
            return True

    # --- deliveries --------------------------------------------------------------------------------------------

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        """Inserts those not there yet (a replayed feed entry yields the same ids); returns how many were new."""
        if not deliveries:
            return 0
        added = 0
        async with self._db.session() as session:
            for delivery in deliveries:
                statement = self._insert(DeliveryRow).values(**_delivery_row(delivery)).on_conflict_do_nothing(
                    index_elements=["id"])
                result = await session.execute(statement)
                added += int(getattr(result, "rowcount", 0) or 0)
        return added

    async def _attempts(self, session: AsyncSession, ids: Sequence[str]) -> dict[str, builtins.list[AttemptRow]]:
        by_delivery: dict[str, builtins.list[AttemptRow]] = {i: [] for i in ids}
        if ids:
            rows = (await session.execute(select(AttemptRow).where(AttemptRow.delivery_id.in_(list(ids)))
                                          .order_by(AttemptRow.id))).scalars().all()
            for row in rows:
                by_delivery[row.delivery_id].append(row)
        return by_delivery

    async def get_delivery(self, tenant: str, delivery_id: str) -> Delivery | None:
        async with self._db.session() as session:
            row = await session.get(DeliveryRow, delivery_id)
            if row is None or row.tenant != tenant:
                return None
            return _delivery(row, (await self._attempts(session, [row.id]))[row.id])

    async def list_deliveries(self, tenant: str, flt: DeliveryFilter, *, before_id: str | None, limit: int
                              ) -> tuple[builtins.list[Delivery], str | None]:
        """Newest first (ids are ordered by event time)."""
        query = select(DeliveryRow).where(DeliveryRow.tenant == tenant)
        if flt.subscription_id:
            query = query.where(DeliveryRow.subscription_id == flt.subscription_id)
        if flt.execution_id:
            query = query.where(DeliveryRow.execution_id == flt.execution_id)
        if flt.state is not None:
            query = query.where(DeliveryRow.state == str(flt.state))
        if before_id is not None:
            query = query.where(DeliveryRow.id < before_id)
        async with self._db.session() as session:
            rows = (await session.execute(query.order_by(DeliveryRow.id.desc()).limit(limit + 1))).scalars().all()
            page = rows[:limit]
            attempts = await self._attempts(session, [r.id for r in page])
            result = [_delivery(r, attempts[r.id]) for r in page]
        return result, (page[-1].id if len(rows) > limit else None)

    async def claim_due(self, now: datetime, limit: int, lease_seconds: float) -> builtins.list[Delivery]:
        """Leases up to `limit` due deliveries to this worker (oldest due first)."""
        if limit <= 0:
            return []
        token = secrets.token_hex(16)
        due = (DeliveryRow.state == _PENDING, DeliveryRow.next_attempt_time <= now,
               or_(DeliveryRow.lease_until.is_(None), DeliveryRow.lease_until <= now))
        async with self._db.session() as session:
            ids = (await session.execute(select(DeliveryRow.id).where(*due).order_by(DeliveryRow.next_attempt_time)
                                         .limit(limit).with_for_update(skip_locked=True))).scalars().all()
            if not ids:
                return []
            # The conditions again: on SQLite (no row locks) this conditional update is what keeps two processes
            # from claiming the same row.
            await session.execute(update(DeliveryRow).where(DeliveryRow.id.in_(ids), *due).values(
                lease_until=now + timedelta(seconds=lease_seconds), claim_token=token))
            rows = (await session.execute(select(DeliveryRow).where(DeliveryRow.claim_token == token)
                                          .order_by(DeliveryRow.next_attempt_time))).scalars().all()
            return [_delivery(r) for r in rows]

    async def record_attempt(self, delivery: Delivery, attempt: Attempt, *, state: DeliveryState,
                             next_attempt_time: datetime, now: datetime) -> bool:
        """Logs an attempt and moves the delivery on; False when the claim was lost meanwhile (a redelivery or
        another worker after the lease lapsed), in which case only the attempt is logged."""
        async with self._db.session() as session:
            session.add(AttemptRow(delivery_id=delivery.id, attempt_time=attempt.attempt_time,
                                   http_status=attempt.http_status, latency_seconds=attempt.latency_seconds,
                                   error=attempt.error))
            await session.execute(update(DeliveryRow).where(DeliveryRow.id == delivery.id).values(
                attempt_count=DeliveryRow.attempt_count + 1, last_http_status=attempt.http_status,
                last_error=attempt.error, last_attempt_time=attempt.attempt_time, update_time=now))
            result = await session.execute(update(DeliveryRow).where(
                DeliveryRow.id == delivery.id, DeliveryRow.claim_token == delivery.claim_token).values(
                state=str(state), next_attempt_time=next_attempt_time, round_attempts=DeliveryRow.round_attempts + 1,
                lease_until=None, claim_token=None))
            return bool(getattr(result, "rowcount", 0) == 1)

    async def release(self, delivery: Delivery, *, next_attempt_time: datetime, now: datetime,
                      dead_letter_reason: str | None = None) -> bool:
        """Ends a claim without an attempt: held back until `next_attempt_time`, or dead-lettered with a reason."""
        values: dict[str, Any] = {"next_attempt_time": next_attempt_time, "lease_until": None, "claim_token": None,
                                  "update_time": now}
        if dead_letter_reason is not None:
            values |= {"state": str(DeliveryState.DEAD_LETTERED), "last_error": dead_letter_reason}
        async with self._db.session() as session:
            result = await session.execute(update(DeliveryRow).where(
                DeliveryRow.id == delivery.id, DeliveryRow.claim_token == delivery.claim_token).values(**values))
            return bool(getattr(result, "rowcount", 0) == 1)

    async def redeliver(self, tenant: str, delivery_id: str, now: datetime, expire_time: datetime
                        ) -> Delivery | None:
        """Schedules a delivery again now, as a new round of the retry schedule, keeping its id."""
        async with self._db.session() as session:
            row = await session.get(DeliveryRow, delivery_id, with_for_update=True)
            if row is None or row.tenant != tenant:
                return None
            row.state = _PENDING
            row.next_attempt_time = now
            row.expire_time = expire_time
            row.round_attempts = 0
            row.lease_until = None
            row.claim_token = None
            row.update_time = now
            await session.flush()
            return _delivery(row, (await self._attempts(session, [row.id]))[row.id])

    async def purge_finished(self, before: datetime, limit: int = 1000) -> int:
        """Deletes delivered and dead-lettered deliveries last changed before `before` (attempts go with them)."""
        async with self._db.session() as session:
            ids = (await session.execute(select(DeliveryRow.id).where(
                DeliveryRow.state != _PENDING, DeliveryRow.update_time < before).limit(limit))).scalars().all()
            if not ids:
                return 0
            await session.execute(delete(AttemptRow).where(AttemptRow.delivery_id.in_(ids)))
            await session.execute(delete(DeliveryRow).where(DeliveryRow.id.in_(ids)))
            return len(ids)

    # --- circuits ----------------------------------------------------------------------------------------------

    async def _locked_circuit(self, session: AsyncSession, key: str) -> CircuitRow | None:
        return (await session.execute(select(CircuitRow).where(CircuitRow.endpoint_key == key)
                                      .with_for_update())).scalar_one_or_none()

    @staticmethod
    def _store(row: CircuitRow, circuit: Circuit, now: datetime) -> None:
        row.state = str(circuit.state)
        row.consecutive_failures = circuit.consecutive_failures
        row.open_until = circuit.open_until
        row.probe_until = circuit.probe_until
        row.update_time = now

    async def circuit_admit(self, key: str, policy: BreakerPolicy, now: datetime) -> Admission:
        async with self._db.session() as session:
            row = await self._locked_circuit(session, key)
            admission, changed = policy.admit(_circuit(row) if row is not None else None, now)
            if row is not None and changed is not None:
                self._store(row, changed, now)
            return admission

    async def circuit_success(self, key: str, policy: BreakerPolicy, now: datetime) -> None:
        async with self._db.session() as session:
            row = await self._locked_circuit(session, key)
            if row is not None and (row.state != str(CircuitState.CLOSED) or row.consecutive_failures):
                self._store(row, policy.on_success(_circuit(row)), now)

    async def circuit_failure(self, key: str, url: str, policy: BreakerPolicy, now: datetime) -> Circuit:
        async with self._db.session() as session:
            await session.execute(self._insert(CircuitRow).values(
                endpoint_key=key, url=url, state=str(CircuitState.CLOSED), consecutive_failures=0, open_until=None,
                probe_until=None, update_time=now).on_conflict_do_nothing(index_elements=["endpoint_key"]))
            row = await self._locked_circuit(session, key)
            if row is None:  # inserted just above, in this transaction
                raise RuntimeError(f"circuit {key} vanished")
            circuit = policy.on_failure(_circuit(row), now)
            self._store(row, circuit, now)
            return circuit

    async def get_circuit(self, key: str) -> Circuit | None:
        async with self._db.session() as session:
            row = await session.get(CircuitRow, key)
            return _circuit(row) if row is not None else None


def endpoint_key(url: str) -> str:
    """The circuit breaker's key of an endpoint: a hash of its URL (URLs may be longer than a key column)."""
    return hashlib.sha256(url.encode()).hexdigest()
