"""The executor fleet in Redis: registration, heartbeats, expiry of silent executors, reservations, catalogs.

Layout (all under one namespace, default "cm:fleet"):
- `{ns}:executors` hash: executor id → JSON summary (address, state, device, memory, load, node classes, cached
  models, catalog hash, labels, register and heartbeat times, drain flag). One HGETALL gives the dispatcher the
  whole fleet.
- `{ns}:descriptions` hash: executor id → the latest ExecutorDescription (protobuf, catalog omitted) for the API.
- `{ns}:catalog:{hash}`: the node catalog of that hash (protobuf), shared by executors running the same node packs.
- `{ns}:reserved:{executor id}`: the execution a dispatcher placed there (SET NX with an expiry renewed with its
  lease), so two dispatcher replicas never book one executor.
- `cm:q:fleet` hash {free, busy}: counts the queue service reports in its stats.

An executor silent for 3 heartbeat intervals is expired (removed); its next heartbeat answers known=false and it
registers again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import redis.asyncio as redis

from comfymesh.common.v1 import catalog_pb2
from comfymesh.executor.v1 import executor_service_pb2 as xpb
from service_runtime.redis_client import as_bytes, as_text

MISSED_HEARTBEATS_BEFORE_EXPIRY = 3
_STATE_NAMES = {v: k.removeprefix("EXECUTOR_STATE_") for k, v in xpb.ExecutorState.items()}
_TIER_NAMES = {v: k.removeprefix("CACHE_TIER_") for k, v in xpb.CacheTier.items()}


@dataclass(frozen=True)
class ExecutorEntry:
    """What placement needs to know about one executor."""

    executor_id: str
    address: str
    state: str  # STARTING, IDLE, BUSY, DRAINING
    device_kind: str
    device_name: str
    memory_total_bytes: int
    memory_free_bytes: int
    utilization_percent: float
    engine: str
    catalog_hash: str
    node_classes: frozenset[str]
    cached_models: dict[str, str]  # model name → best tier ("GPU", "RAM", "DISK", "OBJECT_STORE")
    labels: dict[str, str]
    register_time: float
    last_heartbeat: float
    drain: bool = False
    current_execution_id: str = ""

    @property
    def accepting(self) -> bool:
        return not self.drain and self.state in ("IDLE", "BUSY")

    def to_json(self) -> str:
        values = {k: v for k, v in self.__dict__.items()}
        values["node_classes"] = sorted(self.node_classes)
        return json.dumps(values, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: bytes | str) -> ExecutorEntry:
        values = json.loads(text)
        values["node_classes"] = frozenset(values["node_classes"])
        return cls(**values)


_TIER_RANK = {"GPU": 0, "RAM": 1, "DISK": 2, "OBJECT_STORE": 3}


def _summary(executor_id: str, address: str, description: xpb.ExecutorDescription, labels: dict[str, str],
             node_classes: frozenset[str], register_time: float, drain: bool) -> ExecutorEntry:
    cached: dict[str, str] = {}
    for model in description.cached_models:
        tier = _TIER_NAMES.get(model.tier, "UNSPECIFIED")
        if model.name not in cached or _TIER_RANK.get(tier, 9) < _TIER_RANK.get(cached[model.name], 9):
            cached[model.name] = tier
    device = description.device
    return ExecutorEntry(
        executor_id=executor_id, address=address, state=_STATE_NAMES.get(description.state, "UNSPECIFIED"),
        device_kind=device.kind, device_name=device.name, memory_total_bytes=device.memory_total_bytes,
        memory_free_bytes=device.memory_free_bytes, utilization_percent=device.utilization_percent,
        engine=description.engine, catalog_hash=description.catalog_hash, node_classes=node_classes,
        cached_models=cached, labels=dict(labels), register_time=register_time, last_heartbeat=time.time(),
        drain=drain, current_execution_id=description.current_execution_id)


@dataclass(frozen=True)
class CatalogGroupView:
    """Live executors sharing one catalog."""

    catalog_hash: str
    engine: str
    executor_count: int
    node_classes: frozenset[str]


@dataclass(frozen=True)
class FleetCatalogView:
    nodes: list[catalog_pb2.NodeDefinition]
    catalog_hash: str
    executor_count: int
    groups: list[CatalogGroupView]


@dataclass
class FleetCounts:
    free: int = 0
    busy: int = 0
    draining: int = 0
    total: int = 0
    utilization_mean: float = 0.0
    by_state: dict[str, int] = field(default_factory=dict)


class ExecutorRegistry:
    def __init__(self, client: redis.Redis, *, heartbeat_seconds: float, namespace: str = "cm:fleet",
                 queue_namespace: str = "cm:q") -> None:
        self._redis = client
        self.heartbeat_seconds = heartbeat_seconds
        self._ns = namespace
        self._queue_ns = queue_namespace

    @property
    def expiry_seconds(self) -> float:
        return self.heartbeat_seconds * MISSED_HEARTBEATS_BEFORE_EXPIRY

    def _catalog_key(self, catalog_hash: str) -> str:
        return f"{self._ns}:catalog:{catalog_hash}"

    async def register(self, executor_id: str, address: str, description: xpb.ExecutorDescription,
                       labels: dict[str, str]) -> ExecutorEntry:
        catalog = xpb.ExecutorDescription(catalog=description.catalog)
        catalog_hash = description.catalog_hash or "unhashed"
        node_classes = frozenset(d.name for d in description.catalog)
        stored = xpb.ExecutorDescription()
        stored.CopyFrom(description)
        del stored.catalog[:]
        entry = _summary(executor_id, address, stored, labels, node_classes, time.time(), drain=False)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._catalog_key(catalog_hash), catalog.SerializeToString(), ex=7 * 24 * 3600)
        pipe.hset(f"{self._ns}:executors", executor_id, entry.to_json())
        pipe.hset(f"{self._ns}:descriptions", executor_id, stored.SerializeToString())
        await pipe.execute()
        await self.publish_counts()
        return entry

    async def heartbeat(self, executor_id: str, description: xpb.ExecutorDescription) -> ExecutorEntry | None:
        """Updates a known executor; None when it is unknown (expired or never registered): it must register."""
        raw = await self._redis.hget(f"{self._ns}:executors", executor_id)
        if raw is None:
            return None
        previous = ExecutorEntry.from_json(raw)
        if description.catalog_hash and description.catalog_hash != previous.catalog_hash:
            return None  # its node packs changed: register again with the new catalog
        stored = xpb.ExecutorDescription()
        stored.CopyFrom(description)
        del stored.catalog[:]
        if not stored.catalog_hash:
            stored.catalog_hash = previous.catalog_hash
        entry = _summary(executor_id, previous.address, stored, previous.labels, previous.node_classes,
                         previous.register_time, previous.drain)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(f"{self._ns}:executors", executor_id, entry.to_json())
        pipe.hset(f"{self._ns}:descriptions", executor_id, stored.SerializeToString())
        pipe.expire(self._catalog_key(entry.catalog_hash), 7 * 24 * 3600)
        await pipe.execute()
        return entry

    async def deregister(self, executor_id: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(f"{self._ns}:executors", executor_id)
        pipe.hdel(f"{self._ns}:descriptions", executor_id)
        removed = (await pipe.execute())[0]
        await self.publish_counts()
        return bool(removed)

    async def request_drain(self, executor_id: str) -> bool:
        raw = await self._redis.hget(f"{self._ns}:executors", executor_id)
        if raw is None:
            return False
        entry = ExecutorEntry.from_json(raw)
        values = entry.__dict__ | {"drain": True}
        await self._redis.hset(f"{self._ns}:executors", executor_id, ExecutorEntry(**values).to_json())
        return True

    async def live(self) -> list[ExecutorEntry]:
        """The executors that heartbeated recently, by id."""
        raw = await self._redis.hgetall(f"{self._ns}:executors")
        horizon = time.time() - self.expiry_seconds
        entries = [ExecutorEntry.from_json(v) for v in raw.values()]
        return sorted((e for e in entries if e.last_heartbeat >= horizon), key=lambda e: e.executor_id)

    async def get(self, executor_id: str) -> tuple[ExecutorEntry, xpb.ExecutorDescription] | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(f"{self._ns}:executors", executor_id)
        pipe.hget(f"{self._ns}:descriptions", executor_id)
        raw, description = await pipe.execute()
        if raw is None:
            return None
        entry = ExecutorEntry.from_json(raw)
        if entry.last_heartbeat < time.time() - self.expiry_seconds:
            return None
        return entry, xpb.ExecutorDescription.FromString(as_bytes(description or b""))

    async def expire_silent(self) -> list[str]:
        """Removes executors silent for 3 intervals; returns their ids."""
        raw = await self._redis.hgetall(f"{self._ns}:executors")
        horizon = time.time() - self.expiry_seconds
        silent = [as_text(k) for k, v in raw.items() if ExecutorEntry.from_json(v).last_heartbeat < horizon]
        if silent:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(f"{self._ns}:executors", *silent)
            pipe.hdel(f"{self._ns}:descriptions", *silent)
            await pipe.execute()
        return silent

    async def catalog(self, catalog_hash: str) -> list[catalog_pb2.NodeDefinition]:
        raw = await self._redis.get(self._catalog_key(catalog_hash))
        return list(xpb.ExecutorDescription.FromString(as_bytes(raw)).catalog) if raw else []

    async def fleet_catalog(self, only_hash: str = "") -> FleetCatalogView:
        """The union of the live executors' catalogs (the latest registered wins per class), its hash, the number
        of executors, and the executors grouped by catalog. `only_hash`: that group's catalog alone (None when no
        live executor has it)."""
        executors = sorted(await self.live(), key=lambda e: e.register_time)
        if only_hash:
            executors = [e for e in executors if e.catalog_hash == only_hash]
        merged: dict[str, catalog_pb2.NodeDefinition] = {}
        hashes: list[str] = []
        seen: dict[str, list[catalog_pb2.NodeDefinition]] = {}
        members: dict[str, list[ExecutorEntry]] = {}
        for entry in executors:
            if entry.catalog_hash not in seen:
                seen[entry.catalog_hash] = await self.catalog(entry.catalog_hash)
            for definition in seen[entry.catalog_hash]:
                merged[definition.name] = definition
            hashes.append(entry.catalog_hash)
            members.setdefault(entry.catalog_hash, []).append(entry)
        groups = sorted((CatalogGroupView(h, entries[-1].engine, len(entries), entries[-1].node_classes)
                         for h, entries in members.items()), key=lambda g: (-g.executor_count, g.catalog_hash))
        fleet_hash = f"{len(executors)}:" + ",".join(sorted(set(hashes)))
        return FleetCatalogView([merged[name] for name in sorted(merged)], fleet_hash, len(executors), groups)

    # --- Reservations: one execution per executor across dispatcher replicas ---

    async def reserve(self, executor_id: str, execution_id: str, ttl_seconds: float) -> bool:
        return bool(await self._redis.set(f"{self._ns}:reserved:{executor_id}", execution_id,
                                          px=int(ttl_seconds * 1000), nx=True))

    async def extend_reservation(self, executor_id: str, execution_id: str, ttl_seconds: float) -> None:
        key = f"{self._ns}:reserved:{executor_id}"
        if await self._redis.get(key) == execution_id.encode():
            await self._redis.pexpire(key, int(ttl_seconds * 1000))

    async def release(self, executor_id: str, execution_id: str) -> None:
        key = f"{self._ns}:reserved:{executor_id}"
        if await self._redis.get(key) == execution_id.encode():
            await self._redis.delete(key)

    async def reserved(self, executor_ids: list[str]) -> dict[str, str]:
        if not executor_ids:
            return {}
        values = await self._redis.mget([f"{self._ns}:reserved:{e}" for e in executor_ids])
        return {e: as_text(v) for e, v in zip(executor_ids, values, strict=True) if v is not None}

    # --- Where an execution's earlier attempts failed (placement tries other executors first) ---

    async def avoid(self, execution_id: str, executor_id: str) -> None:
        key = f"{self._ns}:avoid:{execution_id}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(key, executor_id)
        pipe.expire(key, 24 * 3600)
        await pipe.execute()

    async def avoided(self, execution_id: str) -> list[str]:
        return sorted(as_text(m) for m in await self._redis.smembers(f"{self._ns}:avoid:{execution_id}"))

    async def counts(self) -> FleetCounts:
        live = await self.live()
        reserved = await self.reserved([e.executor_id for e in live])
        counts = FleetCounts(total=len(live))
        for entry in live:
            counts.by_state[entry.state] = counts.by_state.get(entry.state, 0) + 1
            if not entry.accepting:
                counts.draining += 1
            elif entry.executor_id in reserved or entry.state == "BUSY":
                counts.busy += 1
            else:
                counts.free += 1
        if live:
            counts.utilization_mean = sum(e.utilization_percent for e in live) / len(live)
        return counts

    async def publish_counts(self) -> FleetCounts:
        counts = await self.counts()
        await self._redis.hset(f"{self._queue_ns}:fleet", mapping={"free": counts.free, "busy": counts.busy})
        return counts
