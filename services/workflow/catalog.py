"""The node catalog the workflow service serves (GET /v1/nodes, GET /v1/object_info) and will validate against.

Until executors register with the fleet (control-plane issue), the catalog is read from one executor's Describe
at COMFYMESH_EXECUTOR_ADDR and kept for a short time, so a burst of requests costs one call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc.aio

from comfymesh.common.v1 import catalog_pb2
from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from service_runtime.errors import Reason, ServiceError, unavailable
from service_runtime.errors.status import from_rpc_error


class ExecutorCatalog:
    def __init__(self, channel_factory: Callable[[], grpc.aio.Channel], ttl_seconds: float = 30.0) -> None:
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._ttl = ttl_seconds
        self._cached: list[catalog_pb2.NodeDefinition] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def definitions(self) -> list[catalog_pb2.NodeDefinition]:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._fetched_at > self._ttl:
                self._cached = await self._fetch()
                self._fetched_at = time.monotonic()
            return self._cached

    async def _fetch(self) -> list[catalog_pb2.NodeDefinition]:
        if self._channel is None:
            self._channel = self._channel_factory()
        stub = executor_service_pb2_grpc.GpuExecutorServiceStub(self._channel)
        try:
            description = await stub.Describe(executor_service_pb2.DescribeRequest(include_catalog=True), timeout=10)
        except grpc.aio.AioRpcError as exc:
            cause: ServiceError = from_rpc_error(exc)
            raise unavailable(f"no executor answered for the node catalog: {cause.message}",
                              Reason.NO_CAPABLE_EXECUTOR, executor_error=cause.code.name) from exc
        return sorted(description.catalog, key=lambda d: d.name)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
