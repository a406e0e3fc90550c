"""What the worker process reports about its model cache, and how the server keeps it: plain, picklable values.

The worker holds every tier (the GPU and RAM tiers in its loaded models, the disk tier and the object store in its
`ModelResolver`); after each model load, job and prefetch it sends a `CacheState` over its pipe. The server keeps
the latest one in a `CacheView` (adding the counters of earlier workers, so statistics count since the executor
started even when a worker was replaced) and serves Describe, heartbeats and Prometheus from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TIERS = ("gpu", "ram", "disk", "object_store")  # fastest first
TIER_RANK = {tier: rank for rank, tier in enumerate(TIERS)}


@dataclass(frozen=True)
class TierStats:
    tier: str
    hits: int
    misses: int
    bytes_loaded: int
    load_seconds: float
    bytes_used: int
    bytes_capacity: int
    errors: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True)
class CachedEntry:
    """A model held in one tier. `name` is what nodes reference (relative to `folder`, e.g. "sd15.safetensors" in
    "checkpoints"); `sha256` is "" when unknown (files of the models directory are not hashed)."""

    name: str
    folder: str
    tier: str
    size: int
    last_used: float = 0.0  # time.time(); 0 when this executor never used it
    sha256: str = ""


@dataclass(frozen=True)
class CacheState:
    device_kind: str = "cpu"  # "cuda" when a GPU tier exists
    entries: tuple[CachedEntry, ...] = ()
    stats: tuple[TierStats, ...] = ()
    loads: tuple[tuple[str, float], ...] = ()  # (tier, seconds) of loads since the previous state (histogram)

    def held(self, name: str, folder: str | None = None) -> list[CachedEntry]:
        """The entries of a model, fastest tier first."""
        found = [e for e in self.entries if e.name == name and (folder is None or e.folder == folder)]
        return sorted(found, key=lambda e: TIER_RANK[e.tier])


@dataclass(frozen=True)
class Prefetch:
    """A request from the server: bring these models to a tier."""

    token: str
    names: tuple[str, ...]
    tier: str  # "gpu", "ram" or "disk"


@dataclass(frozen=True)
class PrefetchOutcome:
    models: tuple[CachedEntry, ...] = ()  # each requested model at the fastest tier holding it now
    missing: tuple[str, ...] = ()  # names no folder, cache or bucket has (nothing was loaded then)
    error: str = ""  # the message of a failed load, with its gRPC code name and reason
    error_code: str = ""
    error_reason: str = ""
    seconds: float = 0.0


@dataclass
class CacheView:
    """The server's copy of the worker's cache state."""

    state: CacheState = field(default_factory=CacheState)
    _base: dict[str, TierStats] = field(default_factory=dict)  # counters of workers that were replaced

    def update(self, state: CacheState) -> None:
        self.state = state

    def worker_replaced(self) -> None:
        """The worker died: what it counted still counts; what it held in RAM and on the device is gone."""
        for stats in self.state.stats:
            base = self._base.get(stats.tier)
            self._base[stats.tier] = stats if base is None else _add(base, stats)
        self.state = dataclasses.replace(self.state, loads=(), stats=tuple(
            dataclasses.replace(s, hits=0, misses=0, bytes_loaded=0, load_seconds=0.0, errors=0,
                                bytes_used=s.bytes_used if s.tier in ("disk", "object_store") else 0)
            for s in self.state.stats), entries=tuple(e for e in self.state.entries if e.tier == "disk"))

    def stats(self) -> list[TierStats]:
        current = {s.tier: s for s in self.state.stats}
        merged = []
        for tier in TIERS:
            now, base = current.get(tier), self._base.get(tier)
            if now is None and base is None:
                continue
            if now is None:
                assert base is not None
                merged.append(dataclasses.replace(base, bytes_used=0))
            else:
                merged.append(now if base is None else _add(base, now))
        return merged


def _add(base: TierStats, now: TierStats) -> TierStats:
    return TierStats(now.tier, base.hits + now.hits, base.misses + now.misses, base.bytes_loaded + now.bytes_loaded,
                     base.load_seconds + now.load_seconds, now.bytes_used, now.bytes_capacity,
                     base.errors + now.errors)
