"""Loaded models stay loaded across executions, and move between device memory and RAM under a budget.

Loading a checkpoint is the expensive part of a cold start; keeping it is what makes the second request fast.
Each entry is keyed by the file's identity (path, size, mtime), so a replaced file is reloaded. When a model must
go to the device and the device budget is exceeded, the least recently used models are moved back to RAM (not
dropped); when RAM holds more than its budget, the least recently used are dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def file_key(path: Path, *extra: object) -> tuple[object, ...]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, *extra)


def module_bytes(value: Any) -> int:
    modules = [value] if isinstance(value, torch.nn.Module) else [
        v for v in getattr(value, "__dict__", {}).values() if isinstance(v, torch.nn.Module)]
    total = 0
    for module in modules:
        total += sum(p.numel() * p.element_size() for p in module.parameters())
        total += sum(b.numel() * b.element_size() for b in module.buffers())
    return total


@dataclass
class Entry:
    value: Any
    size: int
    on_device: bool = False


class ModelCache:
    def __init__(self, device: torch.device, device_budget_bytes: int, ram_budget_bytes: int) -> None:
        self.device = device
        self.device_budget = device_budget_bytes
        self.ram_budget = ram_budget_bytes
        self._entries: OrderedDict[tuple[object, ...], Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: tuple[object, ...], load: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.value
            self.misses += 1
        value = load()  # outside the lock: loading takes seconds
        with self._lock:
            self._entries[key] = Entry(value, module_bytes(value))
            self._entries.move_to_end(key)
            self._trim_ram()
            return value

    def to_device(self, key: tuple[object, ...], move: Callable[[Any, torch.device], None]) -> None:
        """Brings an entry's modules to the compute device, offloading others to RAM to stay in budget."""
        with self._lock:
            entry = self._entries[key]
            self._entries.move_to_end(key)
            if entry.on_device or self.device.type == "cpu":
                entry.on_device = True
                return
            used = sum(e.size for e in self._entries.values() if e.on_device)
            for other_key, other in list(self._entries.items()):
                if used + entry.size <= self.device_budget:
                    break
                if other.on_device and other_key != key:
                    move(other.value, torch.device("cpu"))
                    other.on_device = False
                    used -= other.size
            move(entry.value, self.device)
            entry.on_device = True

    def _trim_ram(self) -> None:
        total = sum(e.size for e in self._entries.values())
        while total > self.ram_budget and len(self._entries) > 1:
            key, evicted = self._entries.popitem(last=False)
            total -= evicted.size
            log.info("model cache: dropped %s (%d MB)", key[0], evicted.size >> 20)

    def keys(self) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._entries)
