"""The webhook worker as its own process (`python -m services.webhook`), killed with SIGKILL and started again:
the delivery it was in the middle of is completed by the new process, from the database alone."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio

from comfymesh.webhook.v1 import webhook_service_pb2 as pb
from comfymesh.webhook.v1 import webhook_service_pb2_grpc
from service_runtime.db import Database, migrate
from service_runtime.healthcheck import check
from service_runtime.ids import time_ordered_id
from service_runtime.processes import ManagedProcess, ValkeyServer, free_port
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.events import EventLog
from services.execution_store.lifecycle import new_event
from services.execution_store.repository import ExecutionRepository
from tests.fixtures.auth import authed_aio_channel, internal_bearer, secret_env
from tests.integration.test_webhook_delivery import Receiver, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SERVICE = "comfymesh.webhook.v1.WebhookService"


def _start(tmp_path: Path, database_url: str, redis_url: str, **settings: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    env = {**os.environ, "COMFYMESH_HOME": str(tmp_path), "COMFYMESH_WEBHOOK_PORT": str(port),
           "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_DATABASE_URL": database_url, "COMFYMESH_REDIS_URL": redis_url,
           "COMFYMESH_SHUTDOWN_GRACE_SECONDS": "1", "COMFYMESH_LOG_FORMAT": "text",
           "COMFYMESH_WEBHOOK_ALLOW_PRIVATE_URLS": "true", "COMFYMESH_WEBHOOK_ALLOW_HTTP": "true",
           "COMFYMESH_WEBHOOK_RETRY_JITTER": "0", "COMFYMESH_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1", **secret_env(),
           **{f"COMFYMESH_WEBHOOK_{k.upper()}": v for k, v in settings.items()}}
    process = ManagedProcess([sys.executable, "-m", "services.webhook"], log_path=tmp_path / "webhook.log", env=env,
                             cwd=ROOT, name="webhook")
    process.start()
    address = f"127.0.0.1:{port}"
    process.wait_ready(lambda: check(address, SERVICE, timeout=1.0), 60)
    return process, address


@asynccontextmanager
async def _stub(address: str) -> AsyncIterator[webhook_service_pb2_grpc.WebhookServiceAsyncStub]:
    async with authed_aio_channel(address, internal_bearer()) as channel:
        yield webhook_service_pb2_grpc.WebhookServiceStub(channel)  # type: ignore[misc]


async def _finished_execution(database_url: str, redis_url: str) -> str:
    """An execution row and its terminal event, written the way the execution service writes them."""
    now = datetime.now(UTC)
    record = ExecutionRecord(id=time_ordered_id(), tenant="default", state=ExecutionState.SUCCEEDED,
                             graph={"1": {"class_type": "SaveImage", "inputs": {}}}, create_time=now,
                             update_time=now, attempt_count=1)
    db = Database(database_url)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await ExecutionRepository(db).add(record)
        event = new_event(record.id, 1, ExecutionState.SUCCEEDED)
        event.succeeded.SetInParent()
        await EventLog(client, max_len=1000, retention_seconds=600).append(event)
    finally:
        await client.aclose()
        await db.dispose()
    return record.id


async def _deliveries(address: str, execution_id: str) -> list[pb.Delivery]:
    async with _stub(address) as stub:
        return list((await stub.ListDeliveries(pb.ListDeliveriesRequest(execution_id=execution_id))).deliveries)


@pytest.fixture
async def migrated(database_url: str) -> str:
    await migrate.upgrade_async(database_url)
    return database_url


async def test_killed_between_attempts_the_next_process_resumes_the_schedule(
        migrated: str, redis_server: ValkeyServer, tmp_path: Path) -> None:
    receiver = Receiver(script=[(500, {})]).start()
    process, address = _start(tmp_path, migrated, redis_server.url, retry_schedule="2s")
    try:
        async with _stub(address) as stub:
            created = await stub.CreateSubscription(pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(url=receiver.url())))
        execution_id = await _finished_execution(migrated, redis_server.url)

        async def first_attempt_recorded() -> bool:
            found = await _deliveries(address, execution_id)
            return bool(found) and found[0].attempt_count == 1

        await eventually(first_attempt_recorded, 30, "the first attempt")
        process.send_signal(signal.SIGKILL)  # mid-schedule: the retry is due in 2 s
        process.wait(timeout=10)
        await asyncio.sleep(2.5)
        assert len(receiver.requests) == 1

        process, address = _start(tmp_path, migrated, redis_server.url, retry_schedule="2s")

        async def delivered() -> bool:
            found = await _deliveries(address, execution_id)
            return bool(found) and found[0].state == pb.DELIVERY_STATE_SUCCEEDED

        await eventually(delivered, 30, "the delivery to complete after the restart")
        [delivery] = await _deliveries(address, execution_id)
        assert [a.http_status for a in delivery.attempts] == [500, 200]
        assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery.delivery_id] * 2
        assert delivery.subscription_id == created.subscription.subscription_id
    finally:
        receiver.stop()
        assert process.stop(grace=20) in (0, -signal.SIGKILL), process.log_tail()


async def test_killed_during_an_attempt_the_claim_lapses_and_the_event_is_sent_again(
        migrated: str, redis_server: ValkeyServer, tmp_path: Path) -> None:
    """At least once: the receiver got the first request but the worker died before writing down the answer."""
    receiver = Receiver(hold_first_seconds=3.0).start()
    settings = {"timeout_seconds": "1"}  # a claim lapses after 2 × timeout + 5 s
    process, address = _start(tmp_path, migrated, redis_server.url, **settings)
    try:
        async with _stub(address) as stub:
            await stub.CreateSubscription(pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(url=receiver.url())))
        execution_id = await _finished_execution(migrated, redis_server.url)

        async def in_flight() -> bool:
            return len(receiver.requests) == 1

        await eventually(in_flight, 30, "the first request")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        [pending] = await _deliveries_direct(migrated, execution_id)
        assert pending == ("PENDING", 0)

        process, address = _start(tmp_path, migrated, redis_server.url, **settings)

        async def delivered() -> bool:
            found = await _deliveries(address, execution_id)
            return bool(found) and found[0].state == pb.DELIVERY_STATE_SUCCEEDED

        await eventually(delivered, 30, "the delivery after the claim lapsed")
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1 and len(receiver.requests) == 2
    finally:
        receiver.stop()
        assert process.stop(grace=20) in (0, -signal.SIGKILL), process.log_tail()


async def _deliveries_direct(database_url: str, execution_id: str) -> list[tuple[str, int]]:
    """The rows themselves (no process is serving the API at that moment)."""
    from services.webhook.domain import DeliveryFilter
    from services.webhook.repository import WebhookRepository

    db = Database(database_url)
    try:
        rows, _ = await WebhookRepository(db).list_deliveries("default", DeliveryFilter(execution_id=execution_id),
                                                              before_id=None, limit=10)
    finally:
        await db.dispose()
    return [(str(d.state), d.attempt_count) for d in rows]
