"""Placement (capability filters, the seeds' §9.2 score) and the autoscaler's decision (the seeds' §4.2)."""

from __future__ import annotations

import time

import pytest

from services.execution.placement import JobNeeds, capable, rank, score
from services.execution.registry import ExecutorEntry
from services.execution.scaling import ScalingPolicy, decide

pytestmark = pytest.mark.unit
GIB = 1 << 30


def entry(executor_id: str, *, classes: tuple[str, ...] = ("KSampler", "SaveImage"), free: int = 60 * GIB,
          total: int = 80 * GIB, util: float = 0.0, cached: dict[str, str] | None = None, kind: str = "cuda",
          state: str = "IDLE", drain: bool = False) -> ExecutorEntry:
    return ExecutorEntry(executor_id=executor_id, address=f"{executor_id}:1", state=state, device_kind=kind,
                         device_name="NVIDIA H100", memory_total_bytes=total, memory_free_bytes=free,
                         utilization_percent=util, engine="builtin", catalog_hash="h", node_classes=frozenset(classes),
                         cached_models=cached or {}, labels={}, register_time=time.time(),
                         last_heartbeat=time.time(), drain=drain)


def test_capability_filters_classes_memory_and_draining() -> None:
    needs = JobNeeds(frozenset({"KSampler"}), (), vram_estimate_bytes=40 * GIB)
    assert capable(entry("a"), needs)
    assert not capable(entry("b", classes=("SaveImage",)), needs)
    assert not capable(entry("c", total=24 * GIB, free=24 * GIB), needs)
    assert not capable(entry("d", drain=True), needs)
    assert not capable(entry("e", state="STARTING"), needs)


def test_models_already_cached_win_and_the_gpu_tier_beats_disk() -> None:
    needs = JobNeeds(frozenset({"KSampler"}), ("sd15.safetensors",))
    on_gpu = entry("gpu", cached={"sd15.safetensors": "GPU"})
    on_disk = entry("disk", cached={"sd15.safetensors": "DISK"})
    cold = entry("cold")
    assert [e.executor_id for e in rank([cold, on_disk, on_gpu], needs)] == ["gpu", "disk", "cold"]
    assert score(on_gpu, needs) > score(on_disk, needs) > score(cold, needs)


def test_load_and_free_memory_break_ties_and_avoided_executors_go_last() -> None:
    needs = JobNeeds(frozenset(), ())
    busy = entry("busy", util=95, free=10 * GIB)
    idle = entry("idle", util=5)
    assert [e.executor_id for e in rank([busy, idle], needs)] == ["idle", "busy"]
    assert [e.executor_id for e in rank([busy, idle], needs, avoid=["idle"])] == ["busy", "idle"]


def test_scaling_follows_the_seed_thresholds() -> None:
    policy = ScalingPolicy()
    up = decide(policy, current=2, queue_depth=14, wait_p90_seconds=5, utilization_percent=50)
    assert (up.desired, "queue depth 14 > 10" in up.reason) == (3, True)
    deep = decide(policy, current=2, queue_depth=40, wait_p90_seconds=5, utilization_percent=50)
    assert deep.desired == 8  # depth target 5 per executor
    assert decide(policy, current=2, queue_depth=3, wait_p90_seconds=90, utilization_percent=50).desired == 3
    assert decide(policy, current=2, queue_depth=3, wait_p90_seconds=5, utilization_percent=95).desired == 3
    down = decide(policy, current=3, queue_depth=1, wait_p90_seconds=2, utilization_percent=20)
    assert down.desired == 2
    assert decide(policy, current=3, queue_depth=5, wait_p90_seconds=20, utilization_percent=70).desired == 3
    assert decide(policy, current=0, queue_depth=1, wait_p90_seconds=0, utilization_percent=0).desired == 1
    assert decide(ScalingPolicy(max_executors=4), current=2, queue_depth=100, wait_p90_seconds=0,
                  utilization_percent=0).desired == 4
