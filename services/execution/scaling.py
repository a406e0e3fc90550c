"""The autoscaler's decision: a desired executor count from queue depth, wait time and GPU utilisation.

Thresholds are the seeds' §4.2 scaling policy: queue depth (target 5 per executor, up above 10, down below 2),
GPU utilisation (up above 90 %, down below 60 %), average wait (up above 60 s, down below 15 s). Any up signal
scales up (to the count that brings depth to its target); all down signals together scale down by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingPolicy:
    depth_target: float = 5
    depth_up: float = 10
    depth_down: float = 2
    utilization_up: float = 90
    utilization_down: float = 60
    wait_up_seconds: float = 60
    wait_down_seconds: float = 15
    min_executors: int = 0
    max_executors: int = 100


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    reason: str


def decide(policy: ScalingPolicy, *, current: int, queue_depth: int, wait_p90_seconds: float,
           utilization_percent: float) -> Decision:
    ups = []
    if queue_depth > policy.depth_up:
        ups.append(f"queue depth {queue_depth} > {policy.depth_up:g}")
    if wait_p90_seconds > policy.wait_up_seconds:
        ups.append(f"wait p90 {wait_p90_seconds:.0f}s > {policy.wait_up_seconds:g}s")
    if current > 0 and utilization_percent > policy.utilization_up:
        ups.append(f"GPU utilisation {utilization_percent:.0f}% > {policy.utilization_up:g}%")
    if current == 0 and queue_depth > 0:
        ups.append(f"{queue_depth} queued and no executor")
    if ups:
        wanted = max(current + 1, math.ceil(queue_depth / policy.depth_target))
        desired = min(policy.max_executors, max(policy.min_executors, wanted))
        return Decision(current, desired, "; ".join(ups))
    if (current > policy.min_executors and queue_depth < policy.depth_down
            and wait_p90_seconds < policy.wait_down_seconds and utilization_percent < policy.utilization_down):
        return Decision(current, current - 1, f"queue depth {queue_depth} < {policy.depth_down:g}, utilisation "
                                              f"{utilization_percent:.0f}% < {policy.utilization_down:g}%")
    return Decision(current, max(policy.min_executors, min(policy.max_executors, current)), "within thresholds")
