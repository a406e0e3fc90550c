"""The queue component: QueueService plus its janitor loop, built from the shared process context."""

from __future__ import annotations

from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from service_runtime.grpc import ServiceBinding
from services.context import AppContext
from services.queue.janitor import Janitor
from services.queue.job_queue import DEFAULT_NAMESPACE, JobQueue
from services.queue.transport import QueueServicer

QUEUE_SERVICE = str(queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name)


def build_queue(ctx: AppContext, namespace: str = DEFAULT_NAMESPACE) -> JobQueue:
    settings = ctx.settings
    return JobQueue(ctx.redis, namespace=namespace, max_queue_size=settings.queue_max_size,
                    lease_seconds=settings.queue_lease_seconds, max_attempts=settings.queue_max_attempts,
                    wait_samples=settings.queue_wait_samples)


def build_queue_binding(ctx: AppContext, namespace: str = DEFAULT_NAMESPACE) -> ServiceBinding:
    """QueueService on `ctx.redis`, with the janitor registered as the background loop "queue-janitor"."""
    queue = build_queue(ctx, namespace)
    janitor = Janitor(queue, ctx.settings.queue_janitor_interval_seconds)
    ctx.background("queue-janitor", janitor.run)
    return ServiceBinding(QUEUE_SERVICE, QueueServicer(queue, ctx.page_tokens),
                          queue_service_pb2_grpc.add_QueueServiceServicer_to_server)
