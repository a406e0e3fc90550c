"""Loaded models stay loaded, and move between device memory and RAM under the device budget (bookkeeping checked
with a recording mover, so it runs without a GPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gpu_executor.diffusion.model_cache import ModelCache

pytestmark = pytest.mark.unit


def _model(megabytes: int) -> torch.nn.Module:
    return torch.nn.Linear(megabytes * (1 << 20) // 4, 1, bias=False)  # float32: 4 bytes per weight


def test_loaded_once_and_offloaded_least_recently_used_first() -> None:
    moves: list[tuple[str, str]] = []
    cache = ModelCache(torch.device("cuda"), device_budget_bytes=5 << 20, ram_budget_bytes=100 << 20)
    loads = {"a": 0, "b": 0}

    def load(name: str) -> Any:
        loads[name] += 1
        module = _model(3)
        module.name = name  # type: ignore[assignment]
        return module

    def move(value: Any, device: torch.device) -> None:
        moves.append((value.name, device.type))

    for _ in range(2):
        cache.get_or_load(("a",), lambda: load("a"))
    assert loads["a"] == 1 and cache.hits == 1
    cache.to_device(("a",), move)
    cache.get_or_load(("b",), lambda: load("b"))
    cache.to_device(("b",), move)  # 3 + 3 MB > 5 MB: a goes back to RAM first
    cache.to_device(("b",), move)  # already there: nothing moves
    assert moves == [("a", "cuda"), ("a", "cpu"), ("b", "cuda")]


def test_ram_budget_drops_least_recently_used() -> None:
    cache = ModelCache(torch.device("cpu"), device_budget_bytes=0, ram_budget_bytes=7 << 20)
    for name in ("a", "b", "c"):
        cache.get_or_load((name,), lambda: _model(3))
    assert cache.keys() == [("b",), ("c",)]
