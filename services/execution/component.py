"""The execution component: ExecutionService plus its background loops (dispatcher, queue-outcome consumer,
reconciler, fleet upkeep), built from the shared process context."""

from __future__ import annotations

import asyncio
import os
import socket

from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from comfymesh.queue.v1 import queue_service_pb2_grpc
from service_runtime.grpc import ServiceBinding, channel_to
from service_runtime.grpc.channels import create_channel
from services.context import AppContext
from services.execution.dispatcher import Dispatcher, ExecutorChannels, RunningIndex
from services.execution.outcomes import OutcomeConsumer
from services.execution.reconciler import Reconciler
from services.execution.registry import ExecutorRegistry
from services.execution.transport import ExecutionServicer
from services.execution_store.cancellation import CancelFlags
from services.execution_store.repository import ExecutionRepository
from services.execution_store.wiring import lifecycle

EXECUTION_SERVICE = str(execution_service_pb2.DESCRIPTOR.services_by_name["ExecutionService"].full_name)
# The queue service's outcome stream (services/queue/job_queue.py `outcomes_stream()`; a test keeps them equal).
QUEUE_OUTCOMES_STREAM = "cm:q:outcomes"


def instance_name(ctx: AppContext) -> str:
    return ctx.settings.service_instance or f"{socket.gethostname()}:{os.getpid()}"


async def _fleet_upkeep(registry: ExecutorRegistry, dispatcher: Dispatcher, interval: float) -> None:
    while True:
        if await registry.expire_silent():
            dispatcher.fleet_changed()
        await registry.publish_counts()
        await asyncio.sleep(interval)


def build_execution_binding(ctx: AppContext) -> ServiceBinding:
    settings = ctx.settings
    queue_channel = channel_to("queue", settings)
    ctx.on_close(queue_channel.close)
    queue = queue_service_pb2_grpc.QueueServiceStub(queue_channel)
    registry = ExecutorRegistry(ctx.redis, heartbeat_seconds=settings.executor_heartbeat_seconds)
    repository = ExecutionRepository(ctx.db)
    states = lifecycle(ctx)
    cancels = CancelFlags(ctx.redis)
    running = RunningIndex(ctx.redis)
    executors = ExecutorChannels(lambda address: create_channel(address, settings))
    ctx.on_close(executors.close)
    consumer = instance_name(ctx)
    dispatcher = Dispatcher(consumer=consumer, queue=queue, registry=registry, repository=repository,
                            lifecycle=states, cancels=cancels, executors=executors, running=running,
                            slots=settings.dispatcher_slots, lease_seconds=settings.queue_lease_seconds,
                            default_run_timeout_seconds=settings.default_run_timeout_seconds)
    outcomes = OutcomeConsumer(ctx.redis, repository, states, stream=QUEUE_OUTCOMES_STREAM, consumer=consumer)
    reconciler = Reconciler(queue, repository, states, cancels,
                            quiet_seconds=max(30.0, 3 * settings.queue_lease_seconds),
                            interval_seconds=max(5.0, settings.queue_lease_seconds))
    ctx.background("dispatcher", dispatcher.run)
    ctx.background("queue-outcomes", outcomes.run)
    ctx.background("reconciler", reconciler.run)
    ctx.background("fleet-upkeep", lambda: _fleet_upkeep(registry, dispatcher, settings.executor_heartbeat_seconds))
    servicer = ExecutionServicer(registry, running, executors, queue, ctx.page_tokens, dispatcher.fleet_changed)
    return ServiceBinding(EXECUTION_SERVICE, servicer,
                          execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server)
