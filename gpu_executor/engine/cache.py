"""The output cache across executions on one executor.

A node's outputs are reused when its cache key matches: the key hashes its class, its literal inputs, the keys
of the nodes it links to (so a change upstream changes every key downstream), and what IS_CHANGED returns. Re-
running a graph with only a new seed therefore re-executes only the sampler and what follows it. Keys do not
include node ids, so an identical subgraph under other ids is reused too. The cache is an LRU bounded by entry
count and by an estimate of the bytes it holds (tensors counted by their storage size).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

UNCACHEABLE = object()  # IS_CHANGED returned NaN: ComfyUI's way of saying "always run me"


def estimate_bytes(value: Any, _depth: int = 0) -> int:
    """Bytes a value holds, without importing torch: tensors and arrays report nbytes / element sizes."""
    if _depth > 8:
        return 0
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, dict):
        return sum(estimate_bytes(v, _depth + 1) for v in value.values()) + sys.getsizeof(value)
    if isinstance(value, (list, tuple)):
        return sum(estimate_bytes(v, _depth + 1) for v in value) + sys.getsizeof(value)
    return sys.getsizeof(value)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return repr(value)


def node_key(class_type: str, literals: dict[str, Any], linked: dict[str, tuple[str, int]],
             is_changed: Any = None) -> str | None:
    """The cache key of one node; None when it must always run."""
    if is_changed is UNCACHEABLE:
        return None
    payload = {"class": class_type, "literals": _canonical(literals),
               "links": {name: [key, index] for name, (key, index) in sorted(linked.items())},
               "changed": _canonical(is_changed)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class CachedOutputs:
    outputs: list[list[Any]]  # per output index, the list of values (ComfyUI's list semantics)
    ui: dict[str, Any] | None
    size: int


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class OutputCache:
    def __init__(self, max_entries: int = 512, max_bytes: int = 4 << 30) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedOutputs] = OrderedDict()
        self.bytes_used = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str | None) -> CachedOutputs | None:
        if key is None or key not in self._entries:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return self._entries[key]

    def put(self, key: str | None, outputs: list[list[Any]], ui: dict[str, Any] | None) -> None:
        if key is None:
            return
        size = estimate_bytes(outputs)
        if size > self.max_bytes:
            return  # bigger than the whole budget: caching it would evict everything for nothing
        if key in self._entries:
            self.bytes_used -= self._entries.pop(key).size
        self._entries[key] = CachedOutputs(outputs, ui, size)
        self.bytes_used += size
        while len(self._entries) > self.max_entries or self.bytes_used > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes_used -= evicted.size
            self.stats.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_used = 0
