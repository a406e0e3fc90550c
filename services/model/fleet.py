"""Which executors hold which model at which cache tier: the executors report their cached models in every
heartbeat, the execution service keeps the live fleet, and this client reads it through
ExecutionService.ListExecutors (never the execution service's internals). A snapshot is reused for a moment so a
page of models costs one call; when the execution service cannot be reached, models are served without locations
rather than failing the read."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import grpc.aio

from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from comfymesh.executor.v1 import executor_service_pb2
from services.model.availability import CachedCopy

log = logging.getLogger(__name__)
TIER_NAMES = {
    executor_service_pb2.CACHE_TIER_GPU: "GPU",
    executor_service_pb2.CACHE_TIER_RAM: "RAM",
    executor_service_pb2.CACHE_TIER_DISK: "DISK",
    executor_service_pb2.CACHE_TIER_OBJECT_STORE: "OBJECT_STORE",
}


class FleetLocations:
    """A `CopySource` over ExecutionService.ListExecutors."""
    def __init__(self, channel_factory: Callable[[], grpc.aio.Channel], ttl_seconds: float = 2.0) -> None:
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._ttl = ttl_seconds
        self._copies: list[CachedCopy] = []
        self._fetched_at = -1e9
        self._lock = asyncio.Lock()

    async def copies(self) -> list[CachedCopy]:
        async with self._lock:
            if time.monotonic() - self._fetched_at > self._ttl:
                self._copies = await self._fetch()
                self._fetched_at = time.monotonic()
            return self._copies

    async def _fetch(self) -> list[CachedCopy]:
        if self._channel is None:
            self._channel = self._channel_factory()
        stub = execution_service_pb2_grpc.ExecutionServiceStub(self._channel)
        copies: list[CachedCopy] = []
        token = ""
        try:
            for _ in range(100):
                page = await stub.ListExecutors(execution_service_pb2.ListExecutorsRequest(
                    page_size=1000, page_token=token), timeout=5)
                for executor in page.executors:
                    seen = executor.last_heartbeat_time.ToDatetime(tzinfo=UTC) \
                        if executor.HasField("last_heartbeat_time") else datetime.now(UTC)
                    for model in executor.description.cached_models:
                        tier = TIER_NAMES.get(model.tier)
                        if tier is not None:
                            copies.append(CachedCopy(executor.executor_id, model.name, model.sha256.lower(), tier,
                                                     seen))
                token = page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as exc:
            log.warning("model locations unavailable (ExecutionService.ListExecutors: %s %s)", exc.code().name,
                        exc.details())
            return []
        return copies

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
