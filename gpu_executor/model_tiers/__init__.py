"""The executor's model cache tiers below GPU memory and RAM: local disk and the object store.

`DiskTier` is a content-addressed directory with a byte budget (size-aware LRU, pins, atomic verified writes, an
index that survives restarts); `ObjectStoreTier` streams objects from S3 into it; `ModelFileCache` ties the two
together behind `local_path` and reports per-tier statistics and Prometheus metrics.
"""

from gpu_executor.model_tiers.cache import ModelFileCache
from gpu_executor.model_tiers.disk import DiskEntry, DiskTier
from gpu_executor.model_tiers.metrics import ModelTierMetrics, model_tier_metrics
from gpu_executor.model_tiers.object_store import FetchResult, ObjectStoreTier
from gpu_executor.model_tiers.state import TierStats

__all__ = [
    "DiskEntry",
    "DiskTier",
    "FetchResult",
    "ModelFileCache",
    "ModelTierMetrics",
    "ObjectStoreTier",
    "TierStats",
    "model_tier_metrics",
]
