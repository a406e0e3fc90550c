"""`ModelFileCache`: a model file's local path from the disk tier, filled from the object store on a miss.

Per-tier statistics come out two ways: `stats()` (a list of `TierStats`) and the process-wide Prometheus metrics
of `metrics.py`. What counts where:

- disk: a hit is a `local_path` served from disk (bytes_loaded += its size, load_seconds += the lookup); a miss
  is one that had to go to the object store. bytes_used / bytes_capacity are the tier's budget.
- object_store: a hit is an object that was fetched (bytes_loaded = bytes actually transferred: 0 when a
  concurrent call for the same sha256 did the download), a miss is a key that does not exist; other failures
  (checksum mismatch, store unavailable) count as errors. Its size is not tracked (bytes_used = capacity = 0).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from gpu_executor.model_tiers.disk import DiskTier
from gpu_executor.model_tiers.metrics import ModelTierMetrics, model_tier_metrics
from gpu_executor.model_tiers.object_store import ObjectStoreTier
from gpu_executor.model_tiers.state import TierStats
from service_runtime.errors import Reason, ServiceError


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    bytes_loaded: int = 0
    load_seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ModelFileCache:
    """Disk tier in front of the object store; safe to call from concurrent tasks."""

    def __init__(self, disk: DiskTier, object_tier: ObjectStoreTier, *, metrics: ModelTierMetrics | None = None
                 ) -> None:
        self.disk, self.object_tier = disk, object_tier
        self._metrics = metrics or model_tier_metrics()
        self._lock = threading.Lock()
        self._counters = {disk.tier: _Counters(), object_tier.tier: _Counters()}
        self._metrics.cache_bytes.labels(disk.tier).set(disk.bytes_used)

    async def local_path(self, name: str, sha256: str, size: int, key: str) -> Path:
        """The local file of model `name` (digest `sha256`, `size` bytes, object `key`): a disk hit, else fetched
        from the object store and verified. Pin it (`pinned_path`) when it must survive eviction while loading."""
        start = time.perf_counter()
        path = await asyncio.to_thread(self.disk.path_for, sha256, name=name)
        if path is not None:
            self._record(self.disk.tier, hit=True, nbytes=size, seconds=time.perf_counter() - start)
            return path
        self._record(self.disk.tier, hit=False)
        try:
            result = await self.object_tier.fetch_into(self.disk, key, sha256, size, name=name)
        except ServiceError as exc:
            self._record(self.object_tier.tier, hit=False if exc.reason == Reason.RESOURCE_NOT_FOUND else None)
            raise
        self._record(self.object_tier.tier, hit=True, nbytes=result.bytes_transferred,
                     seconds=time.perf_counter() - start)
        return result.path

    @asynccontextmanager
    async def pinned_path(self, name: str, sha256: str, size: int, key: str) -> AsyncIterator[Path]:
        """`local_path`, with the file protected from eviction until the block ends."""
        with self.disk.pin(sha256):
            yield await self.local_path(name, sha256, size, key)

    def stats(self) -> list[TierStats]:
        with self._lock:
            disk, remote = self._counters[self.disk.tier], self._counters[self.object_tier.tier]
            return [
                TierStats(self.disk.tier, disk.hits, disk.misses, disk.bytes_loaded, disk.load_seconds,
                          self.disk.bytes_used, self.disk.capacity_bytes, disk.errors),
                TierStats(self.object_tier.tier, remote.hits, remote.misses, remote.bytes_loaded,
                          remote.load_seconds, 0, 0, remote.errors),
            ]

    def _record(self, tier: str, *, hit: bool | None, nbytes: int = 0, seconds: float | None = None) -> None:
        with self._lock:
            counters = self._counters[tier]
            if hit is None:
                counters.errors += 1
            elif hit:
                counters.hits += 1
            else:
                counters.misses += 1
            counters.bytes_loaded += nbytes
            if seconds is not None:
                counters.load_seconds += seconds
            hit_rate = counters.hit_rate
        if seconds is not None:
            self._metrics.load_time.labels(tier).observe(seconds)
        self._metrics.hit_rate.labels(tier).set(hit_rate)
        self._metrics.cache_bytes.labels(self.disk.tier).set(self.disk.bytes_used)
