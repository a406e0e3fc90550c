"""The node catalog the workflow service serves (GET /v1/nodes, GET /v1/object_info) and validates against: the
union of the live fleet's catalogs, from ExecutionService.GetFleetCatalog, and the fleet's groups of executors
that share one catalog (a fleet may mix engines: built-in executors and ComfyUI ones offer different nodes).

It is kept for a moment (`ttl_seconds`) so a burst of submissions costs one call, and the same list object is
kept while the fleet's catalog hash does not change, so derived structures (the validation registry) are reused.
A group's own definitions are fetched once per catalog hash (a hash names its content). An empty fleet is never
cached: the first executor to register is visible at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

import grpc.aio

from comfymesh.common.v1 import catalog_pb2
from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from service_runtime.errors import Reason, ServiceError, unavailable
from service_runtime.errors.status import from_rpc_error

GROUP_CATALOGS_KEPT = 16


@dataclass(frozen=True)
class CatalogGroup:
    """Executors that offer exactly the same nodes (one catalog hash)."""

    catalog_hash: str
    engine: str
    executor_count: int
    node_classes: frozenset[str]


@dataclass(frozen=True)
class Candidate:
    """Node definitions a graph may be validated against: one group's, or the union when the fleet is one group.
    `key` identifies the definitions for caches ("" is the union)."""

    key: str
    definitions: list[catalog_pb2.NodeDefinition]


class ExecutorCatalog:
    def __init__(self, channel_factory: Callable[[], grpc.aio.Channel], ttl_seconds: float = 2.0) -> None:
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._ttl = ttl_seconds
        self._cached: list[catalog_pb2.NodeDefinition] | None = None
        self._hash = ""
        self._groups: tuple[CatalogGroup, ...] = ()
        self._group_definitions: OrderedDict[str, list[catalog_pb2.NodeDefinition]] = OrderedDict()
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def definitions(self) -> list[catalog_pb2.NodeDefinition]:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._fetched_at > self._ttl:
                await self._refresh()
            assert self._cached is not None
            return self._cached

    async def groups(self) -> tuple[CatalogGroup, ...]:
        """The fleet's catalog groups, largest first (empty when the catalog does not know them)."""
        await self.definitions()
        return self._groups

    async def candidates(self, class_types: Collection[str]) -> list[Candidate]:
        """The definitions of every group that offers all of `class_types`, largest group first; the union alone
        when the fleet is one group (or its groups are unknown). Empty when no single group offers them all."""
        union = await self.definitions()
        groups = self._groups
        if len(groups) <= 1:
            return [Candidate("", union)]
        needed = set(class_types)
        candidates = []
        for group in groups:
            if needed <= group.node_classes:
                candidates.append(Candidate(group.catalog_hash, await self._definitions_of(group.catalog_hash)))
        return candidates

    async def _definitions_of(self, catalog_hash: str) -> list[catalog_pb2.NodeDefinition]:
        cached = self._group_definitions.get(catalog_hash)
        if cached is not None:
            self._group_definitions.move_to_end(catalog_hash)
            return cached
        fleet = await self._call(execution_service_pb2.GetFleetCatalogRequest(catalog_hash=catalog_hash))
        definitions = sorted(fleet.nodes, key=lambda d: d.name)
        self._group_definitions[catalog_hash] = definitions
        while len(self._group_definitions) > GROUP_CATALOGS_KEPT:
            self._group_definitions.popitem(last=False)
        return definitions

    async def _call(self, request: execution_service_pb2.GetFleetCatalogRequest) -> execution_service_pb2.FleetCatalog:
        if self._channel is None:
            self._channel = self._channel_factory()
        stub = execution_service_pb2_grpc.ExecutionServiceStub(self._channel)
        try:
            fleet: execution_service_pb2.FleetCatalog = await stub.GetFleetCatalog(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            cause: ServiceError = from_rpc_error(exc)
            if cause.code == grpc.StatusCode.NOT_FOUND:  # that group left the fleet meanwhile
                raise unavailable("the executors that could run this graph left the fleet",
                                  Reason.NO_CAPABLE_EXECUTOR, retry_after_seconds=5) from exc
            raise unavailable(f"the fleet's node catalog is unavailable: {cause.message}",
                              Reason.NO_CAPABLE_EXECUTOR, executor_error=cause.code.name) from exc
        return fleet

    async def _refresh(self) -> None:
        fleet = await self._call(execution_service_pb2.GetFleetCatalogRequest())
        if fleet.executor_count == 0:
            raise unavailable("no executor is registered: start one (python -m gpu_executor serve)",
                              Reason.NO_CAPABLE_EXECUTOR, retry_after_seconds=5)
        if self._cached is None or fleet.catalog_hash != self._hash:
            self._cached = sorted(fleet.nodes, key=lambda d: d.name)
            self._hash = fleet.catalog_hash
            self._groups = tuple(CatalogGroup(g.catalog_hash, g.engine, g.executor_count, frozenset(g.node_classes))
                                 for g in fleet.groups)
        self._fetched_at = time.monotonic()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
