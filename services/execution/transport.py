"""ExecutionService over gRPC: the executor registry, interrupts of running executions, the fleet catalog and the
autoscaler's decision. Dispatching itself has no RPC: it is the dispatcher's background loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc.aio
from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2

from comfymesh.execution.v1 import execution_service_pb2 as epb
from comfymesh.execution.v1 import execution_service_pb2_grpc as egrpc
from comfymesh.executor.v1 import executor_service_pb2 as xpb
from comfymesh.queue.v1 import queue_service_pb2 as qpb
from comfymesh.queue.v1 import queue_service_pb2_grpc as qgrpc
from service_runtime.errors import FieldViolation, Reason, invalid_argument, not_found
from service_runtime.pagination import PageSize, PageTokenCodec
from services.execution.dispatcher import ExecutorChannels, RunningIndex
from services.execution.registry import ExecutorEntry, ExecutorRegistry
from services.execution.scaling import ScalingPolicy, decide

EXECUTOR_PAGE_SIZE = PageSize(default=100, maximum=1000)
MAX_ID_LENGTH = 128


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _check_executor_id(value: str) -> None:
    if not value or len(value) > MAX_ID_LENGTH or any(c.isspace() or not c.isprintable() for c in value):
        raise invalid_argument("executor_id must be 1-128 printable characters without spaces",
                               FieldViolation("executor_id", "missing or malformed"))


def executor_to_proto(entry: ExecutorEntry, description: xpb.ExecutorDescription | None) -> epb.Executor:
    message = epb.Executor(executor_id=entry.executor_id, address=entry.address, slots=1,
                           node_classes=sorted(entry.node_classes), labels=entry.labels,
                           register_time=_timestamp(entry.register_time),
                           last_heartbeat_time=_timestamp(entry.last_heartbeat))
    if description is not None:
        message.description.CopyFrom(description)
    return message


class ExecutionServicer(egrpc.ExecutionServiceServicer):
    def __init__(self, registry: ExecutorRegistry, running: RunningIndex, executors: ExecutorChannels,
                 queue: qgrpc.QueueServiceAsyncStub, tokens: PageTokenCodec,
                 on_fleet_change: Callable[[], None], policy: ScalingPolicy | None = None) -> None:
        self._registry = registry
        self._running = running
        self._executors = executors
        self._queue = queue
        self._tokens = tokens
        self._on_fleet_change = on_fleet_change
        self._policy = policy or ScalingPolicy()

    async def RegisterExecutor(self, request: epb.RegisterExecutorRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> epb.RegisterExecutorResponse:
        _check_executor_id(request.executor_id)
        violations = []
        host, sep, port = request.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            violations.append(FieldViolation("address", "must be host:port"))
        if not request.HasField("description"):
            violations.append(FieldViolation("description", "required"))
        if violations:
            raise invalid_argument("the registration is incomplete", *violations)
        entry = await self._registry.register(request.executor_id, request.address, request.description,
                                              dict(request.labels))
        self._on_fleet_change()
        interval = duration_pb2.Duration()
        interval.FromNanoseconds(int(self._registry.heartbeat_seconds * 1e9))
        found = await self._registry.get(entry.executor_id)
        return epb.RegisterExecutorResponse(executor=executor_to_proto(entry, found[1] if found else None),
                                            heartbeat_interval=interval)

    async def Heartbeat(self, request: epb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> epb.HeartbeatResponse:
        _check_executor_id(request.executor_id)
        entry = await self._registry.heartbeat(request.executor_id, request.description)
        if entry is None:
            return epb.HeartbeatResponse(known=False)
        if entry.state == "IDLE":
            self._on_fleet_change()
        return epb.HeartbeatResponse(known=True, drain=entry.drain)

    async def DeregisterExecutor(self, request: epb.DeregisterExecutorRequest,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> empty_pb2.Empty:
        _check_executor_id(request.executor_id)
        await self._registry.deregister(request.executor_id)
        return empty_pb2.Empty()

    async def GetExecutor(self, request: epb.GetExecutorRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> epb.Executor:
        _check_executor_id(request.executor_id)
        found = await self._registry.get(request.executor_id)
        if found is None:
            raise not_found(f"executor {request.executor_id} is not registered", executor_id=request.executor_id)
        return executor_to_proto(*found)

    async def ListExecutors(self, request: epb.ListExecutorsRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> epb.ListExecutorsResponse:
        size = EXECUTOR_PAGE_SIZE.resolve(request.page_size)
        cursor = self._tokens.decode(request.page_token, {"list": "executors"})
        after = str(cursor["after"]) if cursor else ""
        entries = [e for e in await self._registry.live() if e.executor_id > after]
        page = entries[:size]
        executors = []
        for entry in page:
            found = await self._registry.get(entry.executor_id)
            executors.append(executor_to_proto(entry, found[1] if found else None))
        token = self._tokens.encode({"after": page[-1].executor_id}, {"list": "executors"}) \
            if len(entries) > size else ""
        return epb.ListExecutorsResponse(executors=executors, next_page_token=token)

    async def GetFleetCatalog(self, request: epb.GetFleetCatalogRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> epb.FleetCatalog:
        fleet = await self._registry.fleet_catalog(request.catalog_hash)
        if request.catalog_hash and not fleet.executor_count:
            raise not_found(f"no live executor has the catalog {request.catalog_hash!r}",
                            Reason.NO_CAPABLE_EXECUTOR, catalog_hash=request.catalog_hash)
        groups = [epb.CatalogGroup(catalog_hash=g.catalog_hash, engine=g.engine, executor_count=g.executor_count,
                                   node_classes=sorted(g.node_classes)) for g in fleet.groups]
        return epb.FleetCatalog(nodes=fleet.nodes, executor_count=fleet.executor_count, groups=groups,
                                catalog_hash=request.catalog_hash or fleet.catalog_hash)

    async def InterruptExecution(self, request: epb.InterruptExecutionRequest,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> epb.InterruptExecutionResponse:
        if not request.execution_id:
            raise invalid_argument("execution_id is required", FieldViolation("execution_id", "required"))
        where = await self._running.get(request.execution_id)
        if where is None:
            return epb.InterruptExecutionResponse(delivered=False)
        address, _executor_id, _attempt = where
        reply = await self._executors.stub(address).Interrupt(
            xpb.InterruptRequest(execution_id=request.execution_id), timeout=10)
        return epb.InterruptExecutionResponse(delivered=reply.interrupted)

    async def GetScalingDecision(self, request: epb.GetScalingDecisionRequest,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> epb.ScalingDecision:
        stats = await self._queue.GetQueueStats(qpb.GetQueueStatsRequest())
        counts = await self._registry.counts()
        wait_p90 = stats.recent_wait.p90.ToNanoseconds() / 1e9
        decision = decide(self._policy, current=counts.total, queue_depth=stats.queued_total,
                          wait_p90_seconds=wait_p90, utilization_percent=counts.utilization_mean)
        message = epb.ScalingDecision(current_executors=decision.current, desired_executors=decision.desired,
                                      reason=decision.reason, queue_depth=stats.queued_total,
                                      wait_p90=stats.recent_wait.p90,
                                      gpu_utilization_percent=counts.utilization_mean)
        message.decide_time.GetCurrentTime()
        return message
