"""The execution store on real Redis and databases: event streams (replay, follow, previews, retention), the
terminal-once arbiter of the lifecycle, and the executor registry (registration, heartbeats, expiry, reservations,
the fleet catalog)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as redis

from comfymesh.common.v1 import catalog_pb2
from comfymesh.common.v1 import execution_event_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2 as xpb
from service_runtime.db import Database
from service_runtime.errors import ServiceError
from service_runtime.ids import time_ordered_id
from service_runtime.redis_client import create_redis
from services.execution.registry import ExecutorRegistry
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.events import EventFollower, EventLog, check_event_id
from services.execution_store.lifecycle import CostRates, ExecutionLifecycle, new_event
from services.execution_store.repository import ExecutionRepository

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = create_redis(redis_url)
    yield connection
    await connection.aclose()


def _events(client: redis.Redis) -> EventLog:
    return EventLog(client, max_len=1000, retention_seconds=60, namespace=f"t{uuid.uuid4().hex[:8]}:ev")


def _progress(execution_id: str, value: int) -> pb.ExecutionEvent:
    event = new_event(execution_id, 1, ExecutionState.RUNNING)
    event.node_progress.node_id, event.node_progress.value, event.node_progress.max = "3", value, 10
    return event


async def test_events_replay_after_an_id_and_skip_previews_on_request(client: redis.Redis) -> None:
    log = _events(client)
    execution_id = time_ordered_id()
    ids = [await log.append(_progress(execution_id, i)) for i in range(3)]
    preview = new_event(execution_id, 1, ExecutionState.RUNNING)
    preview.preview.data = b"jpeg"
    await log.append(preview)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [e.node_progress.value for e in await log.read(execution_id, ids[0])] == [1, 2, 0]
    assert [e.event_id for e in await log.read(execution_id, "", include_previews=False)] == ids
    assert await log.last_event_id(execution_id) != ids[-1]  # the preview came last
    assert not await log.has_terminal(execution_id)
    done = new_event(execution_id, 1, ExecutionState.SUCCEEDED)
    done.succeeded.SetInParent()
    await log.append(done)
    assert await log.has_terminal(execution_id)
    assert 0 < await client.ttl(log.key(execution_id)) <= 60  # retention starts at the terminal event


def test_event_ids_are_checked() -> None:
    check_event_id("")
    check_event_id("1733500000000-0")
    with pytest.raises(ServiceError) as caught:
        check_event_id("1; DROP")
    assert caught.value.field_violations[0].field == "after_event_id"


async def test_the_follower_wakes_watchers_of_that_execution_only(client: redis.Redis) -> None:
    log = _events(client)
    follower = EventFollower(client, log.notify_channel)
    first, second = time_ordered_id(), time_ordered_id()
    try:
        with follower.subscribe(first) as wake_first, follower.subscribe(second) as wake_second:
            assert follower.watching == 2
            await asyncio.sleep(0.2)  # the subscription is established
            await log.append(_progress(first, 1))
            await asyncio.wait_for(wake_first.wait(), 5)
            await asyncio.sleep(0.1)
            assert not wake_second.is_set()
        assert follower.watching == 0
    finally:
        await follower.close()


def _record(state: ExecutionState = ExecutionState.QUEUED) -> ExecutionRecord:
    now = datetime.now(UTC)
    return ExecutionRecord(id=time_ordered_id(), tenant="default", state=state,
                           graph={"1": {"class_type": "SaveImage", "inputs": {}}}, create_time=now,
                           update_time=now, queue_time=now)


async def test_only_the_first_terminal_transition_wins(database: Database, client: redis.Redis) -> None:
    log = _events(client)
    lifecycle = ExecutionLifecycle(ExecutionRepository(database), log, CostRates.parse("cpu=0.001,default=0.01"))
    record = _record()
    await lifecycle.repository.add(record)
    started = new_event(record.id, 1, ExecutionState.RUNNING)
    started.started.SetInParent()
    assert await lifecycle.started(record, 1, "executor-a", started)
    record = await lifecycle.repository.get_internal(record.id) or record
    assert record.state is ExecutionState.RUNNING and record.executor_id == "executor-a"

    first = new_event(record.id, 1, ExecutionState.SUCCEEDED)
    first.succeeded.outputs.add(filename="a.png", object_key="executions/x/attempt-1/output/a.png")
    second = new_event(record.id, 2, ExecutionState.SUCCEEDED)
    second.succeeded.outputs.add(filename="b.png", object_key="executions/x/attempt-2/output/b.png")
    wins = await asyncio.gather(lifecycle.finish(record, first, run_seconds=2.0, device_type="cpu"),
                                lifecycle.finish(record, second, run_seconds=2.0, device_type="cpu"))
    assert sorted(wins) == [False, True]
    stored = await lifecycle.repository.get_internal(record.id)
    assert stored is not None and stored.state is ExecutionState.SUCCEEDED
    assert len(stored.outputs) == 1
    assert stored.cost_usd == pytest.approx(0.002) and stored.device_seconds == pytest.approx(2.0)
    kinds = [e.WhichOneof("kind") for e in await log.read(record.id)]
    # The queued event comes first even when the start overtook the submitter; one terminal event, the winner's.
    assert kinds == ["queued", "started", "succeeded"]
    assert not await lifecycle.queued(record, 3)  # the submitter's late queued event is not appended twice
    assert not await lifecycle.cancel(stored, 1, "too late")


async def test_registry_registers_heartbeats_expires_and_reserves(client: redis.Redis) -> None:
    namespace = f"t{uuid.uuid4().hex[:8]}"
    registry = ExecutorRegistry(client, heartbeat_seconds=0.2, namespace=f"{namespace}:fleet",
                                queue_namespace=f"{namespace}:q")
    description = xpb.ExecutorDescription(state=xpb.EXECUTOR_STATE_IDLE, engine="builtin", catalog_hash="c1",
                                          device=xpb.DeviceInfo(kind="cpu", name="cpu", memory_total_bytes=8 << 30))
    description.catalog.extend([catalog_pb2.NodeDefinition(name="SaveImage"),
                                catalog_pb2.NodeDefinition(name="KSampler")])
    entry = await registry.register("ex-1", "127.0.0.1:1", description, {"pool": "test"})
    assert entry.node_classes == {"SaveImage", "KSampler"} and entry.labels == {"pool": "test"}
    fleet = await registry.fleet_catalog()
    assert [n.name for n in fleet.nodes] == ["KSampler", "SaveImage"] and fleet.executor_count == 1
    assert "c1" in fleet.catalog_hash
    assert [(g.catalog_hash, g.engine, g.executor_count) for g in fleet.groups] == [("c1", "builtin", 1)]
    # A second engine: the union grows, and the groups keep each engine's own classes apart.
    other = xpb.ExecutorDescription(state=xpb.EXECUTOR_STATE_IDLE, engine="comfyui", catalog_hash="c9",
                                    device=description.device)
    other.catalog.extend([catalog_pb2.NodeDefinition(name="SaveImage"),
                          catalog_pb2.NodeDefinition(name="UNETLoader")])
    await registry.register("ex-2", "127.0.0.1:2", other, {})
    fleet = await registry.fleet_catalog()
    assert [n.name for n in fleet.nodes] == ["KSampler", "SaveImage", "UNETLoader"] and fleet.executor_count == 2
    assert {(g.engine, g.node_classes) for g in fleet.groups} == {
        ("builtin", frozenset({"SaveImage", "KSampler"})), ("comfyui", frozenset({"SaveImage", "UNETLoader"}))}
    only = await registry.fleet_catalog("c9")
    assert [n.name for n in only.nodes] == ["SaveImage", "UNETLoader"] and only.executor_count == 1
    assert (await registry.fleet_catalog("nope")).executor_count == 0
    await registry.deregister("ex-2")

    beat = xpb.ExecutorDescription(state=xpb.EXECUTOR_STATE_BUSY, current_execution_id="e1")
    beat.cached_models.add(name="m.safetensors", tier=xpb.CACHE_TIER_RAM)
    beat.cached_models.add(name="m.safetensors", tier=xpb.CACHE_TIER_GPU)
    updated = await registry.heartbeat("ex-1", beat)
    assert updated is not None and updated.state == "BUSY" and updated.cached_models == {"m.safetensors": "GPU"}
    assert updated.node_classes == entry.node_classes  # a heartbeat without the catalog keeps it
    assert await registry.heartbeat("ex-1", xpb.ExecutorDescription(catalog_hash="c2")) is None  # new packs
    assert await registry.heartbeat("unknown", beat) is None

    assert await registry.reserve("ex-1", "job-a", 5)
    assert not await registry.reserve("ex-1", "job-b", 5)
    assert await registry.reserved(["ex-1"]) == {"ex-1": "job-a"}
    await registry.release("ex-1", "job-b")  # not the holder: no effect
    assert await registry.reserved(["ex-1"]) == {"ex-1": "job-a"}
    await registry.release("ex-1", "job-a")
    assert await registry.reserved(["ex-1"]) == {}

    counts = await registry.publish_counts()
    assert (counts.total, counts.busy) == (1, 1)
    assert await client.hgetall(f"{namespace}:q:fleet") == {b"free": b"0", b"busy": b"1"}
    await asyncio.sleep(0.7)  # three missed heartbeats
    assert await registry.live() == []
    assert await registry.expire_silent() == ["ex-1"]
    assert await registry.get("ex-1") is None
