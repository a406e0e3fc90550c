"""The node catalog the workflow service serves (GET /v1/nodes, GET /v1/object_info) and validates against: the
union of the live fleet's catalogs, from ExecutionService.GetFleetCatalog.

It is kept for a moment (`ttl_seconds`) so a burst of submissions costs one call, and the same list object is
kept while the fleet's catalog hash does not change, so derived structures (the validation registry) are reused.
An empty fleet is never cached: the first executor to register is visible at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc.aio

from comfymesh.common.v1 import catalog_pb2
from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from service_runtime.errors import Reason, ServiceError, unavailable
from service_runtime.errors.status import from_rpc_error


class ExecutorCatalog:
    def __init__(self, channel_factory: Callable[[], grpc.aio.Channel], ttl_seconds: float = 2.0) -> None:
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._ttl = ttl_seconds
        self._cached: list[catalog_pb2.NodeDefinition] | None = None
        self._hash = ""
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def definitions(self) -> list[catalog_pb2.NodeDefinition]:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._fetched_at > self._ttl:
                await self._refresh()
            assert self._cached is not None
            return self._cached

    async def _refresh(self) -> None:
        if self._channel is None:
            self._channel = self._channel_factory()
        stub = execution_service_pb2_grpc.ExecutionServiceStub(self._channel)
        try:
            fleet = await stub.GetFleetCatalog(execution_service_pb2.GetFleetCatalogRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            cause: ServiceError = from_rpc_error(exc)
            raise unavailable(f"the fleet's node catalog is unavailable: {cause.message}",
                              Reason.NO_CAPABLE_EXECUTOR, executor_error=cause.code.name) from exc
        if fleet.executor_count == 0:
            raise unavailable("no executor is registered: start one (python -m gpu_executor serve)",
                              Reason.NO_CAPABLE_EXECUTOR, retry_after_seconds=5)
        if self._cached is None or fleet.catalog_hash != self._hash:
            self._cached = sorted(fleet.nodes, key=lambda d: d.name)
            self._hash = fleet.catalog_hash
        self._fetched_at = time.monotonic()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
