"""WebhookService end to end in one process, on SQLite and PostgreSQL and a real Redis, with real HTTP receivers.

Execution events are appended to the event log (and so to its feed) exactly as the execution service does; the
feed consumer and the delivery worker run as the component's background loops; receivers are HTTP servers on
127.0.0.1 (private addresses are allowed by setting in these tests, except where the guard is the point), and
every signature is checked with the reference `standardwebhooks` verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import redis.asyncio
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import OperationalError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from comfymesh.webhook.v1 import webhook_service_pb2 as pb
from comfymesh.webhook.v1 import webhook_service_pb2_grpc
from service_runtime.db import migrate
from service_runtime.errors import Reason, ServiceError
from service_runtime.grpc import GrpcServer, ServiceBinding
from service_runtime.ids import time_ordered_id
from service_runtime.settings import Settings
from services.context import AppContext
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.events import EventLog
from services.execution_store.lifecycle import new_event
from services.execution_store.repository import ExecutionRepository
from services.webhook.component import WEBHOOK_SERVICE, WebhookParts, build_webhook
from services.webhook.domain import DeliveryFilter, EventType
from services.webhook.feed import GROUP, MAX_ENTRY_FAILURES, DeliveryPlanner, FeedConsumer, ProgressThrottle
from services.webhook.payload import PayloadBuilder
from services.workflow.files import WorkflowFiles

pytestmark = pytest.mark.integration

GRAPH = {"9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "out"}}}
OUTPUT = {"node_id": "9", "filename": "out_00001_.png", "type": "output", "content_type": "image/png",
          "object_key": "default/abc/out_00001_.png", "size_bytes": 1234}


# --- a real HTTP receiver -----------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers from a script (then `default`)."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: tuple[int, dict[str, str]] = (200, {})
    requests: list[Received] = field(default_factory=list)
    hold_first_seconds: float = 0.0  # the first request is answered this late (an attempt still in flight)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.monotonic()))
                    status, headers = receiver.script.pop(0) if receiver.script else receiver.default
                    hold = receiver.hold_first_seconds if len(receiver.requests) == 1 else 0.0
                if hold:
                    time.sleep(hold)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str = "/hook") -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Any:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


CALL_TIMEOUT_SECONDS = 10.0
TEARDOWN_TIMEOUT_SECONDS = 30.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- the component, running ---------------------------------------------------------------------------------------


@dataclass
class Env:
    settings: Settings
    ctx: AppContext
    parts: WebhookParts
    stub: webhook_service_pb2_grpc.WebhookServiceAsyncStub
    events: EventLog
    executions: ExecutionRepository
    namespace: str

    async def execution(self, *, webhook_url: str = "", tenant: str = "default",
                        state: ExecutionState = ExecutionState.SUCCEEDED) -> ExecutionRecord:
        now = datetime.now(UTC)
        record = ExecutionRecord(id=time_ordered_id(), tenant=tenant, state=state, graph=GRAPH, create_time=now,
                                 update_time=now, webhook_url=webhook_url, labels={"team": "a"},
                                 outputs=[OUTPUT] if state is ExecutionState.SUCCEEDED else [], attempt_count=1)
        await self.executions.add(record)
        return record

    async def append(self, record: ExecutionRecord, kind: str = "succeeded") -> str:
        state = {"succeeded": ExecutionState.SUCCEEDED, "failed": ExecutionState.FAILED,
                 "queued": ExecutionState.QUEUED}.get(kind, ExecutionState.RUNNING)
        event = new_event(record.id, 1, state)
        if kind == "succeeded":
            event.succeeded.outputs.add(node_id="9", filename=OUTPUT["filename"])
        elif kind == "queued":
            event.queued.priority = 0
        elif kind == "node_progress":
            event.node_progress.node_id = "3"
            event.node_progress.value = 1
            event.node_progress.max = 20
        elif kind == "failed":
            event.failed.error.message = "boom"
        return await self.events.append(event)

    async def deliveries(self, **filters: Any) -> list[pb.Delivery]:
        # A bounded call: a stalled service fails this test at once, naming the call, instead of hanging it.
        return list((await self.stub.ListDeliveries(pb.ListDeliveriesRequest(**filters), timeout=CALL_TIMEOUT_SECONDS)
                     ).deliveries)

    async def wait_state(self, delivery_filter: dict[str, Any], state: int, count: int = 1,
                         timeout: float = 15.0) -> list[pb.Delivery]:
        found: list[pb.Delivery] = []

        async def check() -> bool:
            nonlocal found
            found = [d for d in await self.deliveries(**delivery_filter) if d.state == state]
            return len(found) >= count

        await eventually(check, timeout, f"{count} deliveries in state {pb.DeliveryState.Name(state)}")  # type: ignore[arg-type]
        return found

    async def feed(self) -> list[tuple[str, dict[bytes, bytes]]]:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await self.ctx.redis.xrange(self.events.feed_key))
        return [(entry_id.decode(), fields) for entry_id, fields in entries]

    async def subscribe(self, url: str, *event_types: pb.EventType.ValueType, **fields: Any
                        ) -> pb.CreateSubscriptionResponse:
        request = pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(url=url, event_types=list(event_types), **fields))
        return await self.stub.CreateSubscription(request, timeout=CALL_TIMEOUT_SECONDS)


SETTINGS = {
    "webhook_allow_private_urls": True, "webhook_allow_http": True, "webhook_retry_schedule": "150ms,150ms",
    "webhook_retry_jitter": 0.0, "webhook_timeout_seconds": 2.0, "webhook_poll_interval_seconds": 0.05,
    "webhook_breaker_threshold": 100, "webhook_breaker_cooldown_seconds": 1.0, "webhook_feed_claim_idle_seconds": 60,
}


@contextlib.asynccontextmanager
async def running(database_url: str, redis_url: str, home: Path, *, loops: bool = True, **overrides: Any
                  ) -> AsyncIterator[Env]:
    settings = Settings(home=home, database_url=database_url, redis_url=redis_url, metrics_port=0,
                        shutdown_grace_seconds=0.5, **{**SETTINGS, **overrides})
    ctx = AppContext(settings)
    namespace = f"test:wh:{secrets.token_hex(4)}"
    parts = build_webhook(ctx, namespace=namespace, event_namespace=f"{namespace}:ev")
    await parts.consumer.ensure_group()  # before the test appends anything
    if loops:
        ctx.background("webhook-feed", parts.consumer.run)
        ctx.background("webhook-delivery", parts.worker.run)
    server = GrpcServer(settings, "webhook", [ServiceBinding(
        WEBHOOK_SERVICE, parts.servicer, webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server)],
        port=0, host="127.0.0.1")
    server.on_start.append(ctx.start_background)
    server.on_stop.append(ctx.close)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield Env(settings, ctx, parts, webhook_service_pb2_grpc.WebhookServiceStub(channel),  # type: ignore[arg-type]
                      EventLog(ctx.redis, max_len=1000, retention_seconds=600, namespace=f"{namespace}:ev"),
                      ExecutionRepository(ctx.db), namespace)
    finally:
        # Bounded, so a stop that never returns fails the test here instead of running into pytest's timeout.
        async with asyncio.timeout(TEARDOWN_TIMEOUT_SECONDS):
            await server.stop(0.2)  # the loops first: the feed consumer may be blocked on the stream deleted below
            cleanup = redis.asyncio.Redis.from_url(redis_url)
            keys = [key async for key in cleanup.scan_iter(match=f"{namespace}:*", count=1000)]
            if keys:
                await cleanup.delete(*keys)
            await cleanup.aclose()


@pytest.fixture
async def migrated(database_url: str) -> str:
    await migrate.upgrade_async(database_url)
    return database_url


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info, fields = error_details_pb2.ErrorInfo(), []
    assert status.details[0].Unpack(info)
    for detail in status.details[1:]:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return caught.value.code(), info.reason, fields


def _verify(secret: str, request: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


# --- tests --------------------------------------------------------------------------------------------------------


async def test_an_appended_event_is_delivered_signed_to_subscriptions_and_the_execution_url(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    async with running(migrated, redis_url, tmp_path) as env:
        created = await env.subscribe(receiver.url("/sub"))
        assert created.secret.startswith("whsec_") and created.subscription.subscription_id
        assert list(created.subscription.event_types) == []  # every terminal event
        tenant_secret = (await env.stub.GetWebhookSigningSecret(pb.GetWebhookSigningSecretRequest())).secret
        assert tenant_secret.startswith("whsec_") and tenant_secret != created.secret

        record = await env.execution(webhook_url=receiver.url("/exec"))
        await env.append(record, "queued")  # neither endpoint asked for it
        await env.append(record, "succeeded")
        done = await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_SUCCEEDED, count=2)

        [to_sub], [to_exec] = receiver.on("/sub"), receiver.on("/exec")
        payload = _verify(created.secret, to_sub)
        assert _verify(tenant_secret, to_exec) == payload
        with pytest.raises(WebhookVerificationError):
            _verify(tenant_secret, to_sub)  # each endpoint's own secret
        assert to_sub.headers["content-type"] == "application/json"
        assert to_sub.headers["webhook-id"] != to_exec.headers["webhook-id"]  # one id per (event, endpoint)
        assert payload["type"] == "execution.succeeded" and payload["timestamp"].endswith("Z")
        execution = payload["data"]["execution"]
        assert execution["id"] == record.id and execution["state"] == "EXECUTION_STATE_SUCCEEDED"
        assert execution["outputs"][0]["filename"] == OUTPUT["filename"] and "graph" not in execution
        assert execution["labels"] == {"team": "a"}
        assert payload["data"]["event"]["succeeded"]["outputs"][0]["node_id"] == "9"

        by_url = {d.url: d for d in done}
        sub_delivery = by_url[receiver.url("/sub")]
        assert sub_delivery.delivery_id == to_sub.headers["webhook-id"]
        assert sub_delivery.subscription_id == created.subscription.subscription_id
        assert by_url[receiver.url("/exec")].subscription_id == ""
        assert sub_delivery.event_type == pb.EVENT_TYPE_EXECUTION_SUCCEEDED
        assert sub_delivery.attempt_count == 1 and sub_delivery.last_http_status == 200
        [attempt] = sub_delivery.attempts
        assert attempt.http_status == 200 and attempt.latency.ToNanoseconds() > 0 and not attempt.error
        assert json.loads(sub_delivery.payload_json) == payload
        assert not sub_delivery.HasField("next_attempt_time")
        got = await env.stub.GetDelivery(pb.GetDeliveryRequest(delivery_id=sub_delivery.delivery_id))
        assert got == sub_delivery
        assert len(await env.deliveries(execution_id=record.id)) == 2  # nothing for "queued"


async def test_500_then_200_is_delivered_on_retry_with_the_same_webhook_id(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    receiver.script = [(500, {})]
    async with running(migrated, redis_url, tmp_path) as env:
        created = await env.subscribe(receiver.url())
        record = await env.execution()
        await env.append(record)
        [delivery] = await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_SUCCEEDED)
        first, second = receiver.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.delivery_id
        assert first.body == second.body
        _verify(created.secret, first)
        _verify(created.secret, second)
        assert [a.http_status for a in delivery.attempts] == [500, 200]
        assert delivery.attempts[0].error.startswith("HTTP 500") and delivery.attempt_count == 2
        assert second.at - first.at >= 0.1  # the schedule's delay (150 ms), not at once


async def test_an_endpoint_that_stays_down_is_dead_lettered_then_redelivered(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    receiver.default = (503, {})
    async with running(migrated, redis_url, tmp_path) as env:
        created = await env.subscribe(receiver.url())
        record = await env.execution()
        await env.append(record, "failed")
        [dead] = await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_DEAD_LETTERED)
        assert dead.attempt_count == 3 and len(receiver.requests) == 3  # first attempt + 2 retries
        assert dead.last_http_status == 503 and dead.last_error.startswith("HTTP 503")
        assert dead.event_type == pb.EVENT_TYPE_EXECUTION_FAILED
        listed = await env.deliveries(state=pb.DELIVERY_STATE_DEAD_LETTERED,
                                      subscription_id=created.subscription.subscription_id)
        assert [d.delivery_id for d in listed] == [dead.delivery_id]

        receiver.default = (204, {})
        again = await env.stub.RedeliverWebhook(pb.RedeliverWebhookRequest(delivery_id=dead.delivery_id))
        assert again.delivery_id == dead.delivery_id
        assert again.state in (pb.DELIVERY_STATE_PENDING, pb.DELIVERY_STATE_SUCCEEDED)
        [done] = await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_SUCCEEDED)
        assert done.attempt_count == 4 and [a.http_status for a in done.attempts] == [503, 503, 503, 204]
        assert {r.headers["webhook-id"] for r in receiver.requests} == {dead.delivery_id}
        assert _verify(created.secret, receiver.requests[-1])["type"] == "execution.failed"


async def test_private_addresses_are_refused_with_the_guard_on(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    async with running(migrated, redis_url, tmp_path, webhook_allow_private_urls=False) as env:
        for url in (receiver.url(), "http://10.1.2.3/hook", "http://[::1]:8080/hook", "http://169.254.169.254/"):
            code, reason, fields = await _error(env.subscribe(url))
            assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "URL_NOT_ALLOWED",
                                              ["subscription.url"]), url
        code, reason, fields = await _error(env.subscribe("ftp://example.com/x"))
        assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "URL_NOT_ALLOWED", ["subscription.url"])

        # An execution's own webhook_url is checked again when delivering (DNS may have changed since).
        record = await env.execution(webhook_url=receiver.url("/exec"))
        await env.append(record)
        [refused] = await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_DEAD_LETTERED)
        assert refused.attempt_count == 1 and "URL_NOT_ALLOWED" in refused.last_error
        assert "loopback" in refused.last_error
        assert receiver.requests == []

    async with running(migrated, redis_url, tmp_path, webhook_allow_http=False) as env:
        code, reason, fields = await _error(env.subscribe(receiver.url()))
        assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "URL_NOT_ALLOWED", ["subscription.url"])

    # Even with private addresses allowed, cloud metadata stays out of reach.
    async with running(migrated, redis_url, tmp_path) as env:
        code, reason, _ = await _error(env.subscribe("http://169.254.169.254/latest/meta-data/"))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "URL_NOT_ALLOWED")


async def test_retry_after_is_honoured(migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    receiver.script = [(429, {"Retry-After": "1"})]
    async with running(migrated, redis_url, tmp_path, webhook_retry_schedule="50ms,5s") as env:
        await env.subscribe(receiver.url())
        record = await env.execution()
        await env.append(record)
        [delivery] = await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_SUCCEEDED)
        first, second = receiver.requests
        assert second.at - first.at >= 0.95  # Retry-After: 1, not the schedule's 50 ms
        assert [a.http_status for a in delivery.attempts] == [429, 200]


async def test_the_circuit_breaker_opens_holds_deliveries_and_a_probe_closes_it(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    receiver.default = (500, {})
    async with running(migrated, redis_url, tmp_path, webhook_breaker_threshold=2,
                       webhook_breaker_cooldown_seconds=1.5, webhook_retry_schedule="100ms,100ms,100ms,100ms") as env:
        created = await env.subscribe(receiver.url())
        subscription_id = created.subscription.subscription_id
        record = await env.execution()
        await env.append(record)

        async def two_requests() -> bool:
            return len(receiver.requests) >= 2

        await eventually(two_requests, what="two failed attempts")
        opened_at = time.monotonic()
        await asyncio.sleep(0.05)
        subscription = await env.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=subscription_id))
        assert subscription.circuit_open
        # Another event for the same endpoint is held too: nothing reaches the endpoint during the cool-down,
        # although the schedule would retry every 100 ms.
        await env.append(await env.execution())
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == 2
        [held] = [d for d in await env.deliveries(execution_id=record.id)]
        assert held.state == pb.DELIVERY_STATE_PENDING and held.attempt_count == 2

        receiver.default = (200, {})
        await env.wait_state({"subscription_id": subscription_id}, pb.DELIVERY_STATE_SUCCEEDED, count=2)
        first_after = next(r for r in receiver.requests[2:])
        assert first_after.at - opened_at >= 1.3  # the probe came after the cool-down
        subscription = await env.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=subscription_id))
        assert not subscription.circuit_open


async def test_secret_rotation_keeps_old_secret_signatures_valid_during_the_overlap(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    async with running(migrated, redis_url, tmp_path) as env:
        created = await env.subscribe(receiver.url())
        subscription_id, old = created.subscription.subscription_id, created.secret
        rotated = await env.stub.RotateSubscriptionSecret(pb.RotateSubscriptionSecretRequest(
            subscription_id=subscription_id, overlap=_seconds(3600)))
        new = rotated.secret
        assert new != old and new.startswith("whsec_")
        assert 3500 < rotated.old_secret_expire_time.ToSeconds() - time.time() <= 3600
        shown = await env.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=subscription_id))
        assert shown.old_secret_expire_time == rotated.old_secret_expire_time

        record = await env.execution()
        await env.append(record)
        await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_SUCCEEDED)
        during = receiver.requests[-1]
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        assert _verify(old, during) == _verify(new, during)  # a receiver with either secret verifies

        # Rotating again without an overlap: only the newest secret signs from now on.
        newest = (await env.stub.RotateSubscriptionSecret(pb.RotateSubscriptionSecretRequest(
            subscription_id=subscription_id, overlap=_seconds(0)))).secret
        record = await env.execution()
        await env.append(record)
        await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_SUCCEEDED)
        after = receiver.requests[-1]
        _verify(newest, after)
        for stale in (old, new):
            with pytest.raises(WebhookVerificationError):
                _verify(stale, after)


async def test_410_gone_disables_the_subscription(migrated: str, redis_url: str, tmp_path: Path,
                                                  receiver: Receiver) -> None:
    receiver.default = (410, {})
    async with running(migrated, redis_url, tmp_path) as env:
        created = await env.subscribe(receiver.url())
        subscription_id = created.subscription.subscription_id
        record = await env.execution()
        await env.append(record)
        [gone] = await env.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_DEAD_LETTERED)
        assert gone.attempt_count == 1 and gone.last_http_status == 410
        subscription = await env.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=subscription_id))
        assert subscription.disabled and "410" in subscription.disabled_reason

        later = await env.execution()
        await env.append(later)
        await asyncio.sleep(0.5)
        assert await env.deliveries(execution_id=later.id) == []  # disabled: not subscribed any more

        enabled = await env.stub.UpdateSubscription(pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(subscription_id=subscription_id, disabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["disabled"])))
        assert not enabled.disabled and enabled.disabled_reason == ""


async def test_progress_is_opt_in_and_throttled(migrated: str, redis_url: str, tmp_path: Path,
                                                receiver: Receiver) -> None:
    async with running(migrated, redis_url, tmp_path) as env:
        terminal = await env.subscribe(receiver.url("/terminal"))
        progress = await env.subscribe(receiver.url("/progress"), pb.EVENT_TYPE_EXECUTION_PROGRESS,
                                       pb.EVENT_TYPE_EXECUTION_SUCCEEDED, progress_interval=_seconds(30))
        record = await env.execution()
        for _ in range(5):
            await env.append(record, "node_progress")
        await env.append(record, "succeeded")
        await env.wait_state({"subscription_id": progress.subscription.subscription_id},
                             pb.DELIVERY_STATE_SUCCEEDED, count=2)
        await env.wait_state({"subscription_id": terminal.subscription.subscription_id},
                             pb.DELIVERY_STATE_SUCCEEDED)
        types = sorted(_verify(progress.secret, r)["type"] for r in receiver.on("/progress"))
        assert types == ["execution.progress", "execution.succeeded"]  # five progress events, one delivery
        [progress_request] = [r for r in receiver.on("/progress") if b"execution.progress" in r.body]
        event = _verify(progress.secret, progress_request)["data"]["event"]
        assert event["node_progress"] == {"node_id": "3", "value": "1", "max": "20"}
        assert [json.loads(r.body)["type"] for r in receiver.on("/terminal")] == ["execution.succeeded"]


async def test_a_feed_entry_replayed_or_left_by_a_dead_consumer_becomes_one_delivery_per_endpoint(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    async with running(migrated, redis_url, tmp_path, loops=False) as env:
        await env.subscribe(receiver.url())
        record = await env.execution(webhook_url=receiver.url("/exec"))
        await env.append(record)
        # A consumer reads the entry and dies before acknowledging it.
        await env.ctx.redis.xreadgroup(GROUP, "dead-replica", {env.events.feed_key: ">"}, count=10)
        live = FeedConsumer(env.ctx.redis, env.events.feed_key, env.parts.planner.handle, consumer="live",
                            claim_idle_seconds=0.05)
        assert await live.drain_once() == 0  # not new: it is the dead replica's
        await asyncio.sleep(0.1)
        assert await live.claim_abandoned() == 1
        assert len(await env.deliveries(execution_id=record.id)) == 2
        pending = await env.ctx.redis.xpending(env.events.feed_key, GROUP)
        assert pending["pending"] == 0

        # Replaying the same entry (a crash between commit and ack) adds nothing.
        [(entry_id, fields)] = await env.feed()
        assert await env.parts.planner.handle(entry_id, fields) == 0
        assert len(await env.deliveries(execution_id=record.id)) == 2



async def test_a_feed_entry_that_keeps_failing_is_skipped_but_an_outage_never_skips_one(
        migrated: str, redis_url: str, tmp_path: Path) -> None:
    async with running(migrated, redis_url, tmp_path, loops=False) as env:
        record = await env.execution()
        await env.append(record)
        outage = True

        async def handler(entry_id: str, fields: dict[bytes, bytes]) -> int:
            if outage:
                raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database restarting"))
            raise RuntimeError("a bug")

        consumer = FeedConsumer(env.ctx.redis, env.events.feed_key, handler, consumer="c", claim_idle_seconds=60)
        with pytest.raises(OperationalError):
            await consumer.drain_once()
        for _ in range(MAX_ENTRY_FAILURES + 2):  # however long the database is away, the entry stays
            with pytest.raises(OperationalError):
                await consumer.replay_pending()
        outage = False
        for _ in range(MAX_ENTRY_FAILURES - 1):
            with pytest.raises(RuntimeError):
                await consumer.replay_pending()
        assert await consumer.replay_pending() == 1  # the last failure: logged, acknowledged, skipped
        assert (await env.ctx.redis.xpending(env.events.feed_key, GROUP))["pending"] == 0

async def test_the_payload_carries_presigned_output_urls(migrated: str, redis_url: str, tmp_path: Path) -> None:
    class Store:
        async def presigned_get_url(self, bucket: str, key: str, ttl: int) -> str:
            return f"https://s3.example/{bucket}/{key}?X-Amz-Signature=abc&ttl={ttl}"

    async with running(migrated, redis_url, tmp_path, loops=False) as env:
        payloads = PayloadBuilder(env.events, WorkflowFiles(Store(), env.settings))  # type: ignore[arg-type]
        planner = DeliveryPlanner(env.parts.repository, env.executions, payloads,
                                  ProgressThrottle(env.ctx.redis, env.namespace),
                                  execution_url_events={EventType.SUCCEEDED}, default_progress_interval=1,
                                  round_horizon_seconds=60)
        record = await env.execution(webhook_url="https://hooks.example/x")
        entry_id = await env.append(record)
        [(feed_id, fields)] = await env.feed()
        assert await planner.handle(feed_id, fields) == 1
        [delivery] = await env.deliveries(execution_id=record.id)
        output = json.loads(delivery.payload_json)["data"]["execution"]["outputs"][0]
        assert output["url"].startswith("https://s3.example/comfymesh-outputs/default/abc/out_00001_.png?")
        assert output["url_expire_time"].endswith("Z")
        assert json.loads(delivery.payload_json)["data"]["execution"]["last_event_id"] == entry_id


async def test_subscriptions_crud_pagination_idempotency_and_tenant_scoping(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    async with running(migrated, redis_url, tmp_path, loops=False) as env:
        request_id = "8a1c3c3e-3f0e-4a51-9a43-6f6b8f6a1d11"
        first = await env.stub.CreateSubscription(pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(url=receiver.url("/a")), request_id=request_id))
        again = await env.stub.CreateSubscription(pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(url=receiver.url("/a")), request_id=request_id))
        assert again.subscription.subscription_id == first.subscription.subscription_id
        assert again.secret == first.secret
        second = await env.subscribe(receiver.url("/b"), pb.EVENT_TYPE_EXECUTION_QUEUED)
        assert second.subscription.tenant == "default" and second.subscription.HasField("create_time")

        page = await env.stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=1))
        assert [s.subscription_id for s in page.subscriptions] == [first.subscription.subscription_id]
        rest = await env.stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=1,
                                                                            page_token=page.next_page_token))
        assert [s.subscription_id for s in rest.subscriptions] == [second.subscription.subscription_id]
        assert rest.next_page_token == ""

        updated = await env.stub.UpdateSubscription(pb.UpdateSubscriptionRequest(subscription=pb.Subscription(
            subscription_id=second.subscription.subscription_id, url=receiver.url("/c"),
            event_types=[pb.EVENT_TYPE_EXECUTION_STARTED, pb.EVENT_TYPE_EXECUTION_CANCELLED])))
        assert updated.url == receiver.url("/c")
        assert list(updated.event_types) == [pb.EVENT_TYPE_EXECUTION_STARTED, pb.EVENT_TYPE_EXECUTION_CANCELLED]

        code, reason, fields = await _error(env.stub.CreateSubscription(pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(url=receiver.url(), event_types=[pb.EVENT_TYPE_UNSPECIFIED]))))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["subscription.event_types[0]"])
        code, reason, _ = await _error(env.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id="nope")))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        missing = time_ordered_id()
        code, reason, _ = await _error(env.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=missing)))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "WEBHOOK_NOT_FOUND")
        code, reason, _ = await _error(env.stub.GetDelivery(pb.GetDeliveryRequest(delivery_id=missing)))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "DELIVERY_NOT_FOUND")
        code, reason, _ = await _error(env.stub.RedeliverWebhook(pb.RedeliverWebhookRequest(delivery_id=missing)))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "DELIVERY_NOT_FOUND")

        # Another tenant sees neither the subscription nor its deliveries.
        subscriptions = env.parts.subscriptions
        record = await env.execution()
        await env.append(record)
        await env.parts.consumer.drain_once()
        [delivery] = await env.deliveries(execution_id=record.id)
        for call in (subscriptions.get("other", first.subscription.subscription_id),
                     subscriptions.get_delivery("other", delivery.delivery_id),
                     subscriptions.redeliver("other", delivery.delivery_id),
                     subscriptions.delete("other", first.subscription.subscription_id)):
            with pytest.raises(ServiceError) as caught:
                await call
            assert caught.value.reason in (Reason.WEBHOOK_NOT_FOUND, Reason.DELIVERY_NOT_FOUND)
        assert (await subscriptions.list_deliveries("other", DeliveryFilter(), 0, ""))[0] == []

        # Deleting a subscription dead-letters what it still had pending; the log keeps it.
        await env.stub.DeleteSubscription(pb.DeleteSubscriptionRequest(
            subscription_id=first.subscription.subscription_id))
        code, reason, _ = await _error(env.stub.GetSubscription(pb.GetSubscriptionRequest(
            subscription_id=first.subscription.subscription_id)))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "WEBHOOK_NOT_FOUND")
        [kept] = await env.deliveries(execution_id=record.id)
        assert kept.state == pb.DELIVERY_STATE_DEAD_LETTERED and "deleted" in kept.last_error
        code, reason, _ = await _error(env.stub.RedeliverWebhook(pb.RedeliverWebhookRequest(
            delivery_id=kept.delivery_id)))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION")


async def test_a_worker_stopped_mid_schedule_is_resumed_by_a_new_one(
        migrated: str, redis_url: str, tmp_path: Path, receiver: Receiver) -> None:
    """In process: the worker task is cancelled between attempts; a new worker on the same database (a new
    process context, as after a restart) makes the remaining attempt. tests/integration/test_webhook_process.py
    does the same with SIGKILL to a `python -m services.webhook` process."""
    receiver.script = [(500, {})]
    async with running(migrated, redis_url, tmp_path, webhook_retry_schedule="1s") as env:
        await env.subscribe(receiver.url())
        record = await env.execution()
        await env.append(record)

        async def first_attempt_recorded() -> bool:
            found = await env.deliveries(execution_id=record.id)
            return bool(found) and found[0].attempt_count == 1

        await eventually(first_attempt_recorded, what="the first attempt")
        for task in env.ctx._tasks:  # the worker (and the feed consumer) die
            task.cancel()
        await asyncio.gather(*env.ctx._tasks, return_exceptions=True)
        [pending] = await env.deliveries(execution_id=record.id)
        assert pending.state == pb.DELIVERY_STATE_PENDING and pending.attempt_count == 1
        await asyncio.sleep(1.3)
        assert len(receiver.requests) == 1  # nobody is delivering

        async with running(migrated, redis_url, tmp_path, webhook_retry_schedule="1s") as restarted:
            [done] = await restarted.wait_state({"execution_id": record.id}, pb.DELIVERY_STATE_SUCCEEDED)
            assert [a.http_status for a in done.attempts] == [500, 200]
            assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]

