"""GpuExecutorService over gRPC: Execute (a progress stream from the supervised worker), Interrupt, Describe (the
device from NVML, or the CPU; the engine's catalog; the model cache tiers) and PrefetchModels.

The servicer reads everything it reports from the server process's own state: the runner (what runs), the cache
view (the worker's latest cache report) and the worker's catalog. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2

from comfymesh.common.v1 import catalog_pb2, execution_event_pb2
from comfymesh.executor.v1 import executor_service_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2_grpc
from gpu_executor.execution import ExecutionRunner
from gpu_executor.model_tiers.state import CachedEntry, CacheView, TierStats
from gpu_executor.telemetry.gpu import describe_devices
from gpu_executor.worker.backend import ExecutionBackend
from service_runtime.errors import FieldViolation, invalid_argument
from service_runtime.transport.catalog_codec import definition_from_object_info

VERSION = "0.1.0"
CATALOG_WAIT_SECONDS = 300.0
TIERS = {"gpu": pb.CACHE_TIER_GPU, "ram": pb.CACHE_TIER_RAM, "disk": pb.CACHE_TIER_DISK,
         "object_store": pb.CACHE_TIER_OBJECT_STORE}
PREFETCH_TIERS = {pb.CACHE_TIER_GPU: "gpu", pb.CACHE_TIER_RAM: "ram", pb.CACHE_TIER_DISK: "disk"}


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def cached_model(entry: CachedEntry) -> pb.CachedModel:
    model = pb.CachedModel(name=entry.name, sha256=entry.sha256, tier=TIERS[entry.tier], size_bytes=entry.size)
    if entry.last_used:
        model.last_used_time.CopyFrom(_timestamp(entry.last_used))
    return model


def tier_stats(stats: TierStats) -> pb.CacheTierStats:
    return pb.CacheTierStats(tier=TIERS[stats.tier], hits=stats.hits, misses=stats.misses,
                             bytes_used=stats.bytes_used, bytes_capacity=stats.bytes_capacity,
                             bytes_loaded=stats.bytes_loaded, load_seconds=stats.load_seconds)


class ExecutorServicer(executor_service_pb2_grpc.GpuExecutorServiceServicer):
    def __init__(self, executor_id: Callable[[], str], runner: ExecutionRunner, supervisor: ExecutionBackend,
                 view: CacheView, engine: str = "builtin") -> None:
        self._executor_id = executor_id
        self._engine = engine
        self._runner = runner
        self._supervisor = supervisor
        self._view = view
        self._start_time = _timestamp(time.time())
        self._catalog: tuple[str, list[catalog_pb2.NodeDefinition]] = ("", [])

    def state(self) -> pb.ExecutorState.ValueType:
        if self._runner.draining:
            return pb.EXECUTOR_STATE_DRAINING
        if not self._runner.started.is_set() or self._supervisor.starting:  # a worker (re)starting
            return pb.EXECUTOR_STATE_STARTING
        return pb.EXECUTOR_STATE_BUSY if self._runner.busy else pb.EXECUTOR_STATE_IDLE

    async def catalog(self) -> tuple[str, list[catalog_pb2.NodeDefinition]]:
        """The worker's catalog (waiting for the worker when it is still starting) and its hash."""
        deadline = time.monotonic() + CATALOG_WAIT_SECONDS
        while self._supervisor.ready is None and time.monotonic() < deadline:
            if self._runner.startup_error is not None:
                break
            await asyncio.sleep(0.05)
        ready = self._supervisor.ready
        if ready is None:
            return "", []
        if self._catalog[0] != ready.catalog_hash:
            self._catalog = (ready.catalog_hash, [definition_from_object_info(name, info)
                                                  for name, info in ready.catalog.items()])
        return self._catalog

    async def describe(self, include_catalog: bool) -> pb.ExecutorDescription:
        device = (await asyncio.to_thread(describe_devices))[0]  # NVML when there is a GPU, else the CPU
        ready = self._supervisor.ready
        description = pb.ExecutorDescription(
            executor_id=self._executor_id(), engine=self._engine, state=self.state(),
            current_execution_id=self._runner.current[0] if self._runner.current else "",
            executions_completed=self._runner.completed,
            catalog_hash=ready.catalog_hash if ready is not None else "", version=VERSION,
            start_time=self._start_time,
            device=pb.DeviceInfo(
                kind=device.kind, name=device.name, index=device.index, memory_total_bytes=device.memory_total_bytes,
                memory_free_bytes=device.memory_free_bytes, utilization_percent=float(device.utilization_percent or 0),
                temperature_celsius=float(device.temperature_celsius or 0), driver_version=device.driver_version or "",
                compute_capability=device.compute_capability or ""))
        description.cached_models.extend(cached_model(e) for e in self._view.state.entries)
        description.cache_stats.extend(tier_stats(s) for s in self._view.stats())
        if include_catalog:
            catalog_hash, definitions = await self.catalog()
            description.catalog_hash = catalog_hash
            description.catalog.extend(definitions)
        return description

    async def Describe(self, request: pb.DescribeRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.ExecutorDescription:
        return await self.describe(request.include_catalog)

    async def Execute(self, request: pb.ExecuteRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[execution_event_pb2.ExecutionEvent]:
        async for event in self._runner.execute(request):
            yield event

    async def Interrupt(self, request: pb.InterruptRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.InterruptResponse:
        return pb.InterruptResponse(interrupted=self._runner.interrupt(request.execution_id))

    async def PrefetchModels(self, request: pb.PrefetchModelsRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> pb.PrefetchModelsResponse:
        violations = []
        if not request.model_names:
            violations.append(FieldViolation("model_names", "name at least one model"))
        violations += [FieldViolation(f"model_names[{i}]", "empty") for i, n in enumerate(request.model_names)
                       if not n.strip()]
        if request.tier not in PREFETCH_TIERS:
            violations.append(FieldViolation("tier", "one of CACHE_TIER_GPU, CACHE_TIER_RAM, CACHE_TIER_DISK"))
        if violations:
            raise invalid_argument("the prefetch request is incomplete", *violations)
        names = tuple(dict.fromkeys(n.strip() for n in request.model_names))
        outcome = await self._runner.prefetch(names, PREFETCH_TIERS[request.tier])
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(int(outcome.seconds * 1e9))
        return pb.PrefetchModelsResponse(models=[cached_model(e) for e in outcome.models], duration=duration)
