"""The worker's view of its model tiers: the cache state it reports to the server, and prefetching.

Runs in the worker process only. The model store (and the model loaders, which import diffusers and transformers:
seconds) is imported when something first loads a model, not when the worker starts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_executor.diffusion.devices import device_kind
from gpu_executor.engine import runtime
from gpu_executor.model_tiers.resolver import ModelResolver
from gpu_executor.model_tiers.state import CachedEntry, CacheState, Prefetch, PrefetchOutcome, TierStats
from service_runtime.errors import ServiceError

if TYPE_CHECKING:
    from gpu_executor.diffusion.handles import ModelStore

# The folder of a loaded value, by the kind its cache key ends with (for values loaded by path, not by name).
_KIND_FOLDERS = {"checkpoint": "checkpoints", "unet": "unet", "vae": "vae", "controlnet": "controlnet",
                 "lora": "loras", "clip": "clip"}


def _current_store() -> ModelStore | None:
    """The model store if something created it, without importing the loaders."""
    handles = sys.modules.get("gpu_executor.diffusion.handles")
    store: ModelStore | None = handles.current_store() if handles is not None else None
    return store


def find_model(name: str, resolver: ModelResolver | None) -> tuple[str, str] | None:
    """(folder, name) of a model named bare ("sd15.safetensors": the first folder holding it) or with its folder
    ("checkpoints/sd15.safetensors"); None when no folder, cache or bucket has it."""
    folder, _, rest = name.partition("/")
    candidates = [(folder, rest)] if folder in runtime.MODEL_FOLDERS and rest else []
    candidates += [(f, name) for f in runtime.MODEL_FOLDERS]
    for where in candidates:
        if runtime.local_model_path(*where) is not None:
            return where
    for where in candidates if resolver is not None else ():
        assert resolver is not None
        if where[1] in resolver.names(where[0]):
            return where
    return None


class WorkerModels:
    def __init__(self, resolver: ModelResolver | None) -> None:
        self.resolver = resolver

    def state(self, *, take_loads: bool = True) -> CacheState:
        """What every tier holds now and its statistics; with the loads since the last state that took them."""
        store = _current_store()
        entries, stats = self.resolver.snapshot() if self.resolver is not None else ([], [])
        loaded: dict[tuple[str, str, str], CachedEntry] = {}
        if store is not None:
            device_tier = store.cache.has_device_tier
            for value in store.cache.values():
                path, kind = str(value.key[0]), str(value.key[3]) if len(value.key) > 3 else ""
                refs = self.resolver.refs_for(path) if self.resolver is not None else []
                names = [(r.folder, r.name, r.sha256) for r in refs] or [
                    (_KIND_FOLDERS.get(kind, ""), Path(path).name, "")]
                tier = value.tier if device_tier else "ram"
                for folder, name, sha256 in names:
                    slot = (folder, name, tier)
                    previous = loaded.get(slot)
                    size = value.size + (previous.size if previous else 0)
                    last_used = max(value.last_used, previous.last_used if previous else 0.0)
                    loaded[slot] = CachedEntry(name, folder, tier, size, last_used, sha256)
            counters = store.cache.stats()
            budgets = {"gpu": store.cache.device_budget, "ram": store.cache.ram_budget}
            stats = [TierStats(tier, c.hits, c.misses, c.bytes_loaded, c.load_seconds, store.cache.bytes_in(tier),
                               budgets[tier]) for tier, c in counters.items()] + stats
            loads = store.cache.take_loads() if take_loads else []
            kind = store.placement.device.type
        else:  # nothing loaded yet (the store is created by the first load)
            kind = device_kind()
            empty = [TierStats(t, 0, 0, 0, 0.0, 0, 0) for t in (("gpu", "ram") if kind == "cuda" else ("ram",))]
            stats = [*empty, *stats]
            loads = []
        if take_loads and self.resolver is not None:
            loads += self.resolver.take_loads()
        return CacheState(kind, (*loaded.values(), *entries), tuple(stats), tuple(loads))

    def prefetch(self, request: Prefetch) -> PrefetchOutcome:
        started = time.perf_counter()
        found: list[tuple[str, str]] = []
        missing: list[str] = []
        for name in request.names:
            where = find_model(name, self.resolver)
            if where is None:
                missing.append(name)
            else:
                found.append(where)
        if missing:
            return PrefetchOutcome(missing=tuple(missing), seconds=time.perf_counter() - started)
        try:
            for folder, name in found:
                path = runtime.model_path(folder, name)  # the disk tier (downloaded when only the bucket has it)
                if request.tier in ("ram", "gpu"):
                    from gpu_executor.diffusion.handles import model_store

                    model_store().preload(folder, path, to_device=request.tier == "gpu")
        except ServiceError as exc:  # the disk or object-store tier: typed already
            return PrefetchOutcome(error=exc.message, error_code=exc.code.name, error_reason=str(exc.reason),
                                   seconds=time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a file the loaders refuse; reported to the caller as a typed error
            reason = "MODEL_FORMAT_UNSAFE" if type(exc).__name__ == "UnsafeModelFormat" else "MODEL_FILE_INVALID"
            return PrefetchOutcome(error=f"{type(exc).__name__}: {exc}", error_code="FAILED_PRECONDITION",
                                   error_reason=reason, seconds=time.perf_counter() - started)
        state = self.state(take_loads=False)
        models = []
        for folder, name in found:
            held = state.held(name, folder)
            if held:
                models.append(held[0])
        return PrefetchOutcome(models=tuple(models), seconds=time.perf_counter() - started)
