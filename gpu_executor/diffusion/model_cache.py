"""Loaded models stay loaded across executions, and move between device memory and RAM under a budget: the
executor's RAM tier and GPU tier.

Loading a checkpoint is the expensive part of a cold start; keeping it is what makes the second request fast.
Each entry is keyed by the file's identity (path, size, mtime), so a replaced file is reloaded. When a model must
go to the device and the device budget is exceeded, the least recently used models that were moved there are
moved back to RAM (not dropped); when RAM holds more than its budget, the least recently used are dropped.

Per-tier statistics (what `stats()` reports). A lookup is a use of a model in an epoch (the worker starts one per
job and per prefetch): loading it (a loader node) or computing with it (sampling, text encoding, decoding through a
handle whose loader output the engine reused), counted once per model per epoch, in each tier it reaches:

- gpu (only when the compute device is a GPU): a hit is a lookup that found the model on the device; a miss one
  that did not. bytes_loaded / load_seconds: RAM → device moves, and loads made straight onto the device (VAEs,
  text encoders, ControlNets). On a CPU-only executor there is no GPU tier: the modules the CPU computes with are
  in RAM, and are reported as the RAM tier.
- ram: a hit is a lookup that found the model loaded (on a GPU executor: loaded but not on the device); a miss one
  that had to read the file. bytes_loaded / load_seconds: file → RAM loads.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Process-wide: listeners every cache gets (the worker registers its cache reporter before any model loads, without
# importing the loaders), and the budgets the process's model store is created with.
_listeners: list[Callable[[], None]] = []
budgets: dict[str, int] = {}


def add_listener(listener: Callable[[], None]) -> None:
    """Called after every load into, or move between, the tiers of every cache (existing or created later)."""
    _listeners.append(listener)
    for cache in list(_caches):
        cache.listeners.append(listener)


def configure_budgets(*, ram_budget_bytes: int = 0, device_budget_bytes: int = 0) -> None:
    """The RAM and device budgets of the model store created next (0: its default)."""
    if ram_budget_bytes:
        budgets["ram"] = ram_budget_bytes
    if device_budget_bytes:
        budgets["device"] = device_budget_bytes


def new_epoch() -> None:
    """Starts counting lookups afresh (the worker calls it before each job and prefetch)."""
    for cache in list(_caches):
        cache.new_epoch()


_caches: weakref.WeakSet[ModelCache] = weakref.WeakSet()


READ_CHUNK = 64 << 20


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file fully in memory: its data section read with large sequential reads into one buffer, and
    every tensor a view of it. (safetensors' own loader maps the file: its tensors are read lazily, from the page
    cache or the disk, when first touched, and can be dropped by the kernel; a RAM tier must hold the bytes.)"""
    from gpu_executor.diffusion.models.errors import CorruptModelFile
    from gpu_executor.diffusion.models.safetensors_file import TORCH_DTYPES, read_header

    header = read_header(path)
    start = 8 + header.header_size
    nbytes = header.file_size - start
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    array: Any = buffer.numpy()  # shares the tensor's memory
    view = memoryview(array).cast("B")
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        done = 0
        while done < nbytes:
            count = handle.readinto(view[done:done + READ_CHUNK])
            if not count:
                raise CorruptModelFile(f"{path.name}: the file ended after {done} of {nbytes} data bytes")
            done += count
    tensors: dict[str, torch.Tensor] = {}
    for key, info in header.tensors.items():
        begin, end = info.data_offsets
        dtype = TORCH_DTYPES.get(info.dtype)
        if dtype is None:
            raise CorruptModelFile(f"{path.name}: {key!r} has the unsupported dtype {info.dtype}")
        raw = buffer[begin:end]
        if begin % dtype.itemsize:  # not aligned for a view of that dtype: a copy is
            raw = raw.clone()
        tensors[key] = raw.view(dtype).reshape(info.shape)
    return tensors


def file_key(path: Path, *extra: object) -> tuple[object, ...]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, *extra)


def _tensors(value: Any, seen: set[int], depth: int) -> Iterable[torch.Tensor]:
    if id(value) in seen or depth > 6:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, torch.nn.Module):
        yield from value.parameters()
        yield from value.buffers()
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, seen, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, seen, depth + 1)
    elif dataclasses.is_dataclass(value) or hasattr(value, "__dict__"):
        for item in vars(value).values():
            yield from _tensors(item, seen, depth + 1)


def module_bytes(value: Any) -> int:
    """Bytes of the tensors a loaded value holds (modules, state dicts, dataclasses of them), each storage once."""
    storages: dict[int, int] = {}
    for tensor in _tensors(value, set(), 0):
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # meta tensors, exotic subclasses
            continue
        storages[storage.data_ptr() or id(storage)] = storage.nbytes()
    return sum(storages.values())


@dataclass
class Entry:
    value: Any
    size: int
    on_device: bool = False
    movable: bool = False  # brought to the device by to_device, so it can go back to RAM
    last_used: float = 0.0  # time.time()


@dataclass
class TierCounters:
    hits: int = 0
    misses: int = 0
    bytes_loaded: int = 0
    load_seconds: float = 0.0


@dataclass(frozen=True)
class CachedValue:
    """One entry as the cache reports it: its key, size, tier ("gpu" or "ram") and last use."""

    key: tuple[object, ...]
    size: int
    tier: str
    last_used: float


class ModelCache:
    def __init__(self, device: torch.device, device_budget_bytes: int, ram_budget_bytes: int) -> None:
        self.device = device
        self.device_budget = device_budget_bytes
        self.ram_budget = ram_budget_bytes
        self._entries: OrderedDict[tuple[object, ...], Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self._counters = {"gpu": TierCounters(), "ram": TierCounters()}
        self._loads: list[tuple[str, float]] = []  # (tier, seconds) observations not yet taken
        self.listeners: list[Callable[[], None]] = list(_listeners)  # called after a load or a move (unlocked)
        self._seen: set[tuple[object, ...]] = set()  # keys looked up in this epoch
        _caches.add(self)

    @property
    def has_device_tier(self) -> bool:
        """A GPU tier exists only when the compute device is not the CPU."""
        return self.device.type != "cpu"

    def get_or_load(self, key: tuple[object, ...], load: Callable[[], Any], *, on_device: bool = False) -> Any:
        """The cached value, else `load()`'s (kept). `on_device`: `load` puts the value on the compute device."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.last_used = time.time()
                self.hits += 1
                self._count_hit(key, entry)
                return entry.value
            self.misses += 1
            if key not in self._seen:
                self._seen.add(key)
                if self.has_device_tier:
                    self._counters["gpu"].misses += 1
                self._counters["ram"].misses += 1
        started = time.perf_counter()
        value = load()  # outside the lock: loading takes seconds
        seconds = time.perf_counter() - started
        size = module_bytes(value)
        placed = on_device and self.has_device_tier
        with self._lock:
            self._entries[key] = Entry(value, size, on_device=placed, last_used=time.time())
            self._entries.move_to_end(key)
            self._record("gpu" if placed else "ram", size, seconds)
            self._trim_ram()
        self._notify()
        return value

    def to_device(self, key: tuple[object, ...], move: Callable[[Any, torch.device], None],
                  value: Any = None) -> None:
        """Brings an entry's modules to the compute device, offloading others to RAM to stay in budget. `value`:
        the entry's value, re-admitted if the RAM budget dropped it while a handle still used it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if value is None:
                    raise KeyError(key)
                entry = self._entries[key] = Entry(value, module_bytes(value))
            self._entries.move_to_end(key)
            entry.last_used = time.time()
            self._count_hit(key, entry)
            if entry.on_device or not self.has_device_tier:
                return
            used = sum(e.size for e in self._entries.values() if e.on_device)
            for other_key, other in list(self._entries.items()):
                if used + entry.size <= self.device_budget:
                    break
                if other.on_device and other.movable and other_key != key:
                    move(other.value, torch.device("cpu"))
                    other.on_device = False
                    used -= other.size
            started = time.perf_counter()
            move(entry.value, self.device)
            entry.on_device = entry.movable = True
            self._record("gpu", entry.size, time.perf_counter() - started)
        self._notify()

    def new_epoch(self) -> None:
        with self._lock:
            self._seen.clear()

    def _count_hit(self, key: tuple[object, ...], entry: Entry) -> None:
        """A use of a held model, counted once per epoch (a job uses a checkpoint for its UNet, text encoders and
        VAE: one lookup): a GPU hit when it is on the device, else a RAM hit (and a GPU miss on a GPU)."""
        if key in self._seen:
            return
        self._seen.add(key)
        if self.has_device_tier and entry.on_device:
            self._counters["gpu"].hits += 1
            return
        if self.has_device_tier:
            self._counters["gpu"].misses += 1
        self._counters["ram"].hits += 1

    def _record(self, tier: str, size: int, seconds: float) -> None:
        counters = self._counters[tier]
        counters.bytes_loaded += size
        counters.load_seconds += seconds
        self._loads.append((tier, seconds))
        del self._loads[:-1000]  # nobody took them: keep the recent ones only

    def _notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:
                log.exception("model cache listener failed")

    def _trim_ram(self) -> None:
        """Drops least recently used entries held in RAM while RAM holds more than its budget (never the newest)."""
        in_ram = [k for k, e in self._entries.items() if not e.on_device]
        total = sum(self._entries[k].size for k in in_ram)
        for key in in_ram[:-1]:
            if total <= self.ram_budget:
                break
            evicted = self._entries.pop(key)
            total -= evicted.size
            log.info("model cache: dropped %s (%d MB)", key[0], evicted.size >> 20)

    def peek(self, key: tuple[object, ...]) -> Any:
        """The value when cached (None otherwise), without counting a lookup."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.value if entry is not None else None

    def keys(self) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._entries)

    def values(self) -> list[CachedValue]:
        """Every entry, least recently used first, with the tier it is in now."""
        with self._lock:
            return [CachedValue(k, e.size, "gpu" if e.on_device else "ram", e.last_used)
                    for k, e in self._entries.items()]

    def stats(self) -> dict[str, TierCounters]:
        """Counters of the tiers this cache holds: "ram", and "gpu" when the device is a GPU."""
        with self._lock:
            tiers = ("gpu", "ram") if self.has_device_tier else ("ram",)
            return {t: dataclasses.replace(self._counters[t]) for t in tiers}

    def bytes_in(self, tier: str) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values() if (e.on_device == (tier == "gpu")))

    def take_loads(self) -> list[tuple[str, float]]:
        """The (tier, seconds) of loads and moves since the last call (for the load-time histogram)."""
        with self._lock:
            loads, self._loads = self._loads, []
            return loads
