"""Prometheus metrics of the model cache tiers, created once per process on the default registry.

Every tier (gpu, ram, disk, object_store) reports under the same three names, told apart by the `tier` label:
`model_load_time_seconds` (how long making a model available took, by the tier that served it),
`cache_hit_rate` (hits / (hits + misses)) and `model_cache_bytes` (bytes the tier holds).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Gauge, Histogram

# From a disk-cache lookup (sub-millisecond) to a multi-GB download from the object store (minutes).
LOAD_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class ModelTierMetrics:
    load_time: Histogram  # model_load_time_seconds{tier}
    hit_rate: Gauge  # cache_hit_rate{tier}
    cache_bytes: Gauge  # model_cache_bytes{tier}

    @classmethod
    def create(cls, registry: CollectorRegistry = DEFAULT_REGISTRY) -> ModelTierMetrics:
        return cls(
            load_time=Histogram("model_load_time_seconds", "Time to make a model available, labelled by the cache "
                                "tier that served it.", ("tier",), registry=registry, buckets=LOAD_TIME_BUCKETS),
            hit_rate=Gauge("cache_hit_rate", "Model cache hits / (hits + misses) per tier.", ("tier",),
                           registry=registry),
            cache_bytes=Gauge("model_cache_bytes", "Bytes of models a cache tier holds.", ("tier",),
                              registry=registry),
        )


_metrics: ModelTierMetrics | None = None
_metrics_lock = threading.Lock()


def model_tier_metrics() -> ModelTierMetrics:
    """The process-wide model tier metrics (created once: Prometheus refuses duplicate registrations)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = ModelTierMetrics.create()
        return _metrics
