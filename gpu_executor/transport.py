"""GpuExecutorService over gRPC. Describe is served from the engine's catalog and the device; Execute, Interrupt and
PrefetchModels (the supervised worker, cache tiers, object-store I/O) come with the executor-service issue and
answer UNIMPLEMENTED until then."""

from __future__ import annotations

import time
from typing import Any

import grpc.aio
from google.protobuf import timestamp_pb2

from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from gpu_executor.device import cpu_device
from gpu_executor.engine.registry import NodeRegistry
from service_runtime.transport.catalog_codec import definition_from_object_info

VERSION = "0.1.0"


class ExecutorServicer(executor_service_pb2_grpc.GpuExecutorServiceServicer):
    def __init__(self, executor_id: str, registry: NodeRegistry) -> None:
        self._executor_id = executor_id
        self._registry = registry
        self._catalog = registry.catalog()
        self._catalog_hash = registry.catalog_hash()
        self._start_time = timestamp_pb2.Timestamp()
        self._start_time.FromSeconds(int(time.time()))

    async def Describe(self, request: executor_service_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> executor_service_pb2.ExecutorDescription:
        device = cpu_device()
        description = executor_service_pb2.ExecutorDescription(
            executor_id=self._executor_id, state=executor_service_pb2.EXECUTOR_STATE_IDLE, engine="builtin",
            catalog_hash=self._catalog_hash, version=VERSION, start_time=self._start_time,
            device=executor_service_pb2.DeviceInfo(kind=device.kind, name=device.name, index=device.index,
                                                   memory_total_bytes=device.memory_total_bytes,
                                                   memory_free_bytes=device.memory_free_bytes))
        if request.include_catalog:
            description.catalog.extend(definition_from_object_info(name, info) for name, info in self._catalog.items())
        return description
