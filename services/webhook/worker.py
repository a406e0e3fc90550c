"""The delivery worker: claims due deliveries from the database and makes their attempts.

Every step is written before the next is taken (see repository.py), so a worker can be killed at any point: a
claim it held lapses after `lease_seconds` and another worker (or this one, restarted) claims the delivery again.
An attempt interrupted after the receiver got the request may therefore be repeated: delivery is at least once,
with the same `webhook-id`, which is what receivers deduplicate on. Deliveries are not ordered between themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Histogram

from services.webhook.breaker import BreakerPolicy
from services.webhook.domain import Attempt, Delivery, DeliveryState
from services.webhook.repository import WebhookRepository
from services.webhook.schedule import GONE, RetrySchedule, next_delay
from services.webhook.sender import SendResult, WebhookSender

log = logging.getLogger(__name__)

ATTEMPTS = Counter("webhook_attempts_total", "Webhook delivery attempts, by outcome.", ("outcome",))
FINISHED = Counter("webhook_deliveries_finished_total", "Deliveries that were delivered or dead-lettered.",
                   ("state",))
LATENCY = Histogram("webhook_attempt_duration_seconds", "Duration of webhook delivery attempts.",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
HELD = Counter("webhook_deliveries_held_total", "Times a due delivery was held back (circuit open, paused).",
               ("why",))

DISABLED_RECHECK_SECONDS = 60.0
PURGE_INTERVAL_SECONDS = 600.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class DeliveryWorker:
    def __init__(self, repository: WebhookRepository, sender: WebhookSender, schedule: RetrySchedule,
                 breaker: BreakerPolicy, tenant_secret: Callable[[str], str], *, concurrency: int,
                 poll_interval_seconds: float, lease_seconds: float, retention_seconds: float,
                 rng: random.Random | None = None) -> None:
        self._repository = repository
        self._sender = sender
        self._schedule = schedule
        self._breaker = breaker
        self._tenant_secret = tenant_secret
        self._concurrency = max(1, concurrency)
        self._poll = poll_interval_seconds
        self._lease = lease_seconds
        self._retention = retention_seconds
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """New deliveries were recorded (or resumed): look for due ones now rather than at the next poll."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        next_purge = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                if loop.time() >= next_purge:
                    next_purge = loop.time() + PURGE_INTERVAL_SECONDS
                    await self._purge()
                self._wake.clear()
                claimed = await self.claim_and_start()
                if claimed and len(self._in_flight) < self._concurrency:
                    continue  # there may be more due right now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
        finally:
            await self.stop()

    async def claim_and_start(self) -> int:
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        batch = await self._repository.claim_due(utcnow(), free, self._lease)
        for delivery in batch:
            task = asyncio.create_task(self._deliver_logged(delivery), name=f"webhook-delivery-{delivery.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._done)
        return len(batch)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def stop(self) -> None:
        """Cancels attempts in flight; their claims lapse and they are made again (here after a restart, or by
        another replica)."""
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _purge(self) -> None:
        try:
            removed = await self._repository.purge_finished(utcnow() - timedelta(seconds=self._retention))
            if removed:
                log.info("removed %d finished webhook deliveries older than the retention", removed)
        except Exception:  # housekeeping never stops deliveries
            log.exception("purging old webhook deliveries failed")

    async def _deliver_logged(self, delivery: Delivery) -> None:
        try:
            await self.deliver(delivery)
        except asyncio.CancelledError:
            # Stopping: hand the claim back so a restarted worker need not wait for the lease to lapse (a no-op
            # when the outcome was already written). Should this fail too, the lease lapses as after a crash.
            with contextlib.suppress(Exception):
                now = utcnow()
                await asyncio.wait_for(self._repository.release(delivery, next_attempt_time=now, now=now), 2.0)
            raise
        except Exception:  # one delivery's failure must not stop the worker; its claim lapses
            log.exception("webhook delivery %s failed unexpectedly; it will be retried when its claim lapses",
                          delivery.id)

    async def deliver(self, delivery: Delivery) -> None:
        """One claimed delivery: held back, dead-lettered or attempted, and the outcome recorded."""
        now = utcnow()
        if delivery.subscription_id:
            subscription = await self._repository.get_subscription_internal(delivery.subscription_id)
            if subscription is None:
                await self._repository.release(delivery, next_attempt_time=now, now=now,
                                               dead_letter_reason="the subscription was deleted")
                FINISHED.labels(str(DeliveryState.DEAD_LETTERED)).inc()
                return
            if subscription.disabled:
                HELD.labels("disabled").inc()
                await self._repository.release(delivery, now=now, next_attempt_time=now + timedelta(
                    seconds=DISABLED_RECHECK_SECONDS))
                return
            secrets = subscription.signing_secrets(now)
        else:
            secrets = [self._tenant_secret(delivery.tenant)]

        admission = await self._repository.circuit_admit(delivery.endpoint_key, self._breaker, now)
        if not admission.allowed:
            if now >= delivery.expire_time:
                await self._repository.release(
                    delivery, next_attempt_time=now, now=now,
                    dead_letter_reason="not attempted: the endpoint's circuit breaker stayed open past the end of "
                                       "the retry schedule")
                FINISHED.labels(str(DeliveryState.DEAD_LETTERED)).inc()
                return
            HELD.labels("circuit_open").inc()
            retry_at = admission.retry_at or now + timedelta(seconds=self._breaker.cooldown_seconds)
            # Spread the held deliveries so they do not all come back in the same instant.
            spread = timedelta(seconds=self._rng.uniform(0, max(0.05, self._poll)))
            await self._repository.release(delivery, next_attempt_time=retry_at + spread, now=now)
            return

        attempt_time = utcnow()
        result = await self._sender.send(delivery.url, delivery.id, delivery.payload_json.encode(), secrets)
        await self._record(delivery, result, attempt_time)

    async def _record(self, delivery: Delivery, result: SendResult, attempt_time: datetime) -> None:
        now = utcnow()
        attempt = Attempt(attempt_time, result.status, result.latency_seconds, result.error)
        LATENCY.observe(result.latency_seconds)
        key, url = delivery.endpoint_key, delivery.url
        if result.delivered:
            ATTEMPTS.labels("delivered").inc()
            await self._repository.record_attempt(delivery, attempt, state=DeliveryState.SUCCEEDED,
                                                  next_attempt_time=now, now=now)
            await self._repository.circuit_success(key, self._breaker, now)
            FINISHED.labels(str(DeliveryState.SUCCEEDED)).inc()
            return
        if result.refused:
            ATTEMPTS.labels("refused").inc()
            await self._repository.record_attempt(delivery, attempt, state=DeliveryState.DEAD_LETTERED,
                                                  next_attempt_time=now, now=now)
            FINISHED.labels(str(DeliveryState.DEAD_LETTERED)).inc()
            log.warning("webhook delivery %s refused by the URL policy: %s", delivery.id, result.error)
            return
        if result.status == GONE:
            ATTEMPTS.labels("gone").inc()
            # The subscription is disabled before the delivery is dead-lettered: whoever sees the dead letter also
            # sees why no further event will be sent there.
            if delivery.subscription_id:
                await self._repository.disable_subscription(
                    delivery.subscription_id, f"the endpoint answered 410 Gone at {now.isoformat()}", now)
                log.warning("webhook subscription %s disabled: its endpoint answered 410 Gone",
                            delivery.subscription_id)
            await self._repository.record_attempt(delivery, attempt, state=DeliveryState.DEAD_LETTERED,
                                                  next_attempt_time=now, now=now)
            await self._repository.circuit_success(key, self._breaker, now)  # it answered: not an outage
            FINISHED.labels(str(DeliveryState.DEAD_LETTERED)).inc()
            return
        ATTEMPTS.labels("failed").inc()
        circuit = await self._repository.circuit_failure(key, url, self._breaker, now)
        if circuit.is_open() and circuit.open_until is not None:
            log.warning("webhook endpoint %s: circuit breaker open until %s after %d consecutive failures",
                        delivery.endpoint_key[:12], circuit.open_until.isoformat(), circuit.consecutive_failures)
        delay = next_delay(self._schedule, delivery.round_attempts + 1, result.status, result.retry_after, self._rng)
        if delay is None:
            await self._repository.record_attempt(delivery, attempt, state=DeliveryState.DEAD_LETTERED,
                                                  next_attempt_time=now, now=now)
            FINISHED.labels(str(DeliveryState.DEAD_LETTERED)).inc()
            return
        await self._repository.record_attempt(delivery, attempt, state=DeliveryState.PENDING,
                                              next_attempt_time=now + timedelta(seconds=delay), now=now)
