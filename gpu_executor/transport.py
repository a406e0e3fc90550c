"""GpuExecutorService over gRPC: Execute (a progress stream from the supervised worker), Interrupt, and Describe
(the device from NVML, or the CPU, and the engine's catalog). PrefetchModels answers UNIMPLEMENTED until the cache
tiers are wired in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
from google.protobuf import timestamp_pb2

from comfymesh.common.v1 import execution_event_pb2
from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from gpu_executor.engine.registry import NodeRegistry
from gpu_executor.execution import ExecutionRunner
from gpu_executor.telemetry.gpu import describe_devices
from service_runtime.transport.catalog_codec import definition_from_object_info

VERSION = "0.1.0"


class ExecutorServicer(executor_service_pb2_grpc.GpuExecutorServiceServicer):
    def __init__(self, executor_id: str, registry: NodeRegistry, runner: ExecutionRunner) -> None:
        self._executor_id = executor_id
        self._runner = runner
        self._registry = registry
        self._catalog = registry.catalog()
        self._catalog_hash = registry.catalog_hash()
        self._start_time = timestamp_pb2.Timestamp()
        self._start_time.FromSeconds(int(time.time()))

    async def Describe(self, request: executor_service_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> executor_service_pb2.ExecutorDescription:
        device = (await asyncio.to_thread(describe_devices))[0]  # NVML when there is a GPU, else the CPU
        busy = self._runner.current is not None
        description = executor_service_pb2.ExecutorDescription(
            executor_id=self._executor_id, engine="builtin",
            state=executor_service_pb2.EXECUTOR_STATE_BUSY if busy else executor_service_pb2.EXECUTOR_STATE_IDLE,
            current_execution_id=self._runner.current[0] if self._runner.current else "",
            executions_completed=self._runner.completed,
            catalog_hash=self._catalog_hash, version=VERSION, start_time=self._start_time,
            device=executor_service_pb2.DeviceInfo(
                kind=device.kind, name=device.name, index=device.index, memory_total_bytes=device.memory_total_bytes,
                memory_free_bytes=device.memory_free_bytes, utilization_percent=float(device.utilization_percent or 0),
                temperature_celsius=float(device.temperature_celsius or 0), driver_version=device.driver_version or "",
                compute_capability=device.compute_capability or ""))
        if request.include_catalog:
            description.catalog.extend(definition_from_object_info(name, info) for name, info in self._catalog.items())
        return description

    async def Execute(self, request: executor_service_pb2.ExecuteRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[execution_event_pb2.ExecutionEvent]:
        async for event in self._runner.execute(request):
            yield event

    async def Interrupt(self, request: executor_service_pb2.InterruptRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> executor_service_pb2.InterruptResponse:
        return executor_service_pb2.InterruptResponse(interrupted=self._runner.interrupt(request.execution_id))
