"""The webhook component: WebhookService plus its two background loops, built from the shared process context.

- "webhook-feed": the feed consumer (feed.py) turns execution events into delivery rows;
- "webhook-delivery": the delivery worker (worker.py) makes the attempts.

Both run in every process that serves the component (`python -m services.webhook`, or `make run`'s control
plane); several replicas share the work through the Redis consumer group and the database's row locks.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

import httpx

from comfymesh.webhook.v1 import webhook_service_pb2, webhook_service_pb2_grpc
from service_runtime.grpc import ServiceBinding
from service_runtime.secrets import deployment_secret
from services.context import AppContext
from services.execution_store.events import EventLog
from services.execution_store.repository import ExecutionRepository
from services.webhook.breaker import BreakerPolicy
from services.webhook.domain import parse_event_types
from services.webhook.feed import DeliveryPlanner, FeedConsumer, ProgressThrottle
from services.webhook.payload import PayloadBuilder
from services.webhook.repository import WebhookRepository
from services.webhook.schedule import RetrySchedule
from services.webhook.sender import WebhookSender
from services.webhook.signing import tenant_secret
from services.webhook.subscriptions import WebhookSubscriptions
from services.webhook.transport import WebhookServicer
from services.webhook.urls import UrlPolicy
from services.webhook.worker import DeliveryWorker
from services.workflow.files import WorkflowFiles

WEBHOOK_SERVICE = str(webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name)
DEFAULT_NAMESPACE = "cm:wh"
DEFAULT_EVENT_NAMESPACE = "cm:ev"


@functools.cache
def _tenant_secret(secret: bytes, tenant: str) -> str:
    return tenant_secret(secret, tenant)


@dataclass(frozen=True)
class WebhookParts:
    repository: WebhookRepository
    subscriptions: WebhookSubscriptions
    planner: DeliveryPlanner
    consumer: FeedConsumer
    worker: DeliveryWorker
    servicer: WebhookServicer


def build_webhook(ctx: AppContext, *, namespace: str = DEFAULT_NAMESPACE,
                  event_namespace: str = DEFAULT_EVENT_NAMESPACE) -> WebhookParts:
    """The component's parts on `ctx.db` and `ctx.redis` (nothing started). `namespace` prefixes this component's
    Redis keys; `event_namespace` is the execution event log's (its feed is `<event_namespace>:feed`)."""
    settings = ctx.settings
    repository = WebhookRepository(ctx.db)
    schedule = RetrySchedule.parse(settings.webhook_retry_schedule, settings.webhook_retry_jitter)
    # A claim outlives the longest attempt (its timeout) with room for the database writes around it.
    lease = 2 * settings.webhook_timeout_seconds + 5.0
    breaker = BreakerPolicy(threshold=max(1, settings.webhook_breaker_threshold),
                            cooldown_seconds=settings.webhook_breaker_cooldown_seconds, probe_seconds=lease)
    # How long one round of attempts may take, held-back time included: past it a held delivery is dead-lettered.
    horizon = schedule.horizon_seconds + settings.webhook_breaker_cooldown_seconds + settings.webhook_timeout_seconds
    policy = UrlPolicy(allow_private=settings.webhook_allow_private_urls, allow_http=settings.webhook_allow_http)
    secret = deployment_secret(settings)

    def secret_of(tenant: str) -> str:
        return _tenant_secret(secret, tenant)

    client = httpx.AsyncClient(trust_env=False, follow_redirects=False,
                               timeout=httpx.Timeout(settings.webhook_timeout_seconds),
                               limits=httpx.Limits(max_connections=max(1, settings.webhook_concurrency)))
    ctx.on_close(client.aclose)
    worker = DeliveryWorker(repository, WebhookSender(client, policy, timeout_seconds=settings.webhook_timeout_seconds),
                            schedule, breaker, secret_of, concurrency=settings.webhook_concurrency,
                            poll_interval_seconds=settings.webhook_poll_interval_seconds,
                            lease_seconds=lease,
                            retention_seconds=settings.webhook_delivery_retention_seconds)
    events = EventLog(ctx.redis, max_len=settings.event_stream_max_len,
                      retention_seconds=settings.event_retention_seconds, namespace=event_namespace)
    store = ctx.object_store if settings.s3_endpoint else None
    planner = DeliveryPlanner(repository, ExecutionRepository(ctx.db), PayloadBuilder(events, WorkflowFiles(
        store, settings)), ProgressThrottle(ctx.redis, namespace),
        execution_url_events=parse_event_types(settings.webhook_execution_url_events),
        default_progress_interval=settings.webhook_progress_interval_seconds, round_horizon_seconds=horizon,
        on_new=worker.wake)
    consumer = FeedConsumer(ctx.redis, events.feed_key, planner.handle,
                            consumer=settings.service_instance or f"{socket.gethostname()}:{os.getpid()}",
                            claim_idle_seconds=settings.webhook_feed_claim_idle_seconds)
    subscriptions = WebhookSubscriptions(repository, ctx.page_tokens, policy,
                                         default_overlap_seconds=settings.webhook_secret_overlap_seconds,
                                         round_horizon_seconds=horizon, on_resume=worker.wake)
    return WebhookParts(repository, subscriptions, planner, consumer, worker, WebhookServicer(subscriptions, secret_of))


def build_webhook_binding(ctx: AppContext, *, namespace: str = DEFAULT_NAMESPACE,
                          event_namespace: str = DEFAULT_EVENT_NAMESPACE) -> ServiceBinding:
    """WebhookService, with the feed consumer ("webhook-feed") and the delivery worker ("webhook-delivery")
    registered as background loops of the process."""
    parts = build_webhook(ctx, namespace=namespace, event_namespace=event_namespace)
    ctx.background("webhook-feed", parts.consumer.run)
    ctx.background("webhook-delivery", parts.worker.run)
    return ServiceBinding(WEBHOOK_SERVICE, parts.servicer,
                          webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server)
