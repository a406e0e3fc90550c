"""The bookkeeping of the executor's cache tiers without processes: RAM/GPU lookups counted once per model per job,
loads and moves timed per tier, the server's view surviving a worker replacement, model object keys, and the
resolver's disk tier (models directory plus content-addressed cache) without an object store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from gpu_executor.diffusion.model_cache import ModelCache, module_bytes, read_state_dict
from gpu_executor.engine import runtime
from gpu_executor.model_tiers.bucket import model_key, split_key
from gpu_executor.model_tiers.resolver import ModelResolver, ResolverConfig
from gpu_executor.model_tiers.state import CachedEntry, CacheState, CacheView, TierStats

pytestmark = pytest.mark.unit


def _model(megabytes: int) -> torch.nn.Module:
    return torch.nn.Linear(megabytes * (1 << 20) // 4, 1, bias=False)


def test_cpu_lookups_count_once_per_job_in_ram() -> None:
    cache = ModelCache(torch.device("cpu"), device_budget_bytes=0, ram_budget_bytes=100 << 20)
    reports: list[int] = []
    cache.listeners.append(lambda: reports.append(1))
    cache.get_or_load(("a", 0, 0, "checkpoint"), lambda: _model(2))
    cache.to_device(("a", 0, 0, "checkpoint"), lambda value, device: None)  # same job: the same lookup
    assert {t: (c.hits, c.misses) for t, c in cache.stats().items()} == {"ram": (0, 1)}  # no GPU tier on a CPU
    assert cache.stats()["ram"].bytes_loaded == 2 << 20 and cache.stats()["ram"].load_seconds > 0
    assert [(t, s > 0) for t, s in cache.take_loads()] == [("ram", True)] and cache.take_loads() == []
    assert reports == [1]

    cache.new_epoch()  # the next job uses the model through a handle the engine kept: a RAM hit
    cache.to_device(("a", 0, 0, "checkpoint"), lambda value, device: None)
    cache.to_device(("a", 0, 0, "checkpoint"), lambda value, device: None)
    assert (cache.stats()["ram"].hits, cache.stats()["ram"].misses) == (1, 1)
    (value,) = cache.values()
    assert (value.tier, value.size) == ("ram", 2 << 20) and value.last_used > 0


def test_gpu_tier_counts_device_hits_and_moves() -> None:
    moves: list[str] = []
    cache = ModelCache(torch.device("cuda"), device_budget_bytes=10 << 20, ram_budget_bytes=100 << 20)

    def move(value: Any, device: torch.device) -> None:
        moves.append(device.type)

    key = ("a", 0, 0, "checkpoint")
    cache.get_or_load(key, lambda: _model(3))  # loaded into RAM: a miss in both tiers
    cache.to_device(key, move)  # moved to the device: a GPU load, not another lookup
    stats = cache.stats()
    assert {t: (c.hits, c.misses) for t, c in stats.items()} == {"gpu": (0, 1), "ram": (0, 1)}
    assert stats["gpu"].bytes_loaded == 3 << 20 and moves == ["cuda"]
    cache.get_or_load(("vae", 0, 0, "vae"), lambda: _model(1), on_device=True)  # loaded straight to the device
    assert cache.stats()["gpu"].bytes_loaded == 4 << 20 and cache.bytes_in("gpu") == 4 << 20

    cache.new_epoch()
    cache.get_or_load(key, lambda: _model(3))
    assert (cache.stats()["gpu"].hits, cache.stats()["ram"].hits) == (1, 0)  # found on the device
    assert {v.key[0]: v.tier for v in cache.values()} == {"a": "gpu", "vae": "gpu"}


def test_the_view_keeps_counting_across_worker_replacements() -> None:
    disk = CachedEntry("m.safetensors", "checkpoints", "disk", 10, 1.0, "ab" * 32)
    ram = CachedEntry("m.safetensors", "checkpoints", "ram", 20, 2.0)
    view = CacheView()
    view.update(CacheState("cpu", (ram, disk), (TierStats("ram", 1, 2, 20, 0.5, 20, 100),
                                                 TierStats("disk", 3, 0, 30, 0.1, 10, 50))))
    assert view.state.held("m.safetensors") == [ram, disk]
    view.worker_replaced()
    assert view.state.entries == (disk,)  # the RAM it held died with it; the disk cache did not
    assert {s.tier: s.bytes_used for s in view.stats()} == {"ram": 0, "disk": 10}
    view.update(CacheState("cpu", (), (TierStats("ram", 0, 1, 20, 0.25, 20, 100),
                                       TierStats("disk", 1, 0, 10, 0.1, 10, 50))))
    merged = {s.tier: s for s in view.stats()}
    assert (merged["ram"].hits, merged["ram"].misses, merged["ram"].bytes_loaded) == (1, 3, 40)
    assert merged["ram"].load_seconds == pytest.approx(0.75) and merged["ram"].bytes_used == 20
    assert (merged["disk"].hits, merged["disk"].hit_rate) == (4, 1.0)
    assert [s.tier for s in view.stats()] == ["ram", "disk"]  # fastest tier first


def test_model_object_keys() -> None:
    assert model_key("checkpoints", "sd15.safetensors") == "checkpoints/sd15.safetensors"
    assert model_key("loras", "styles/ink.safetensors") == "loras/styles/ink.safetensors"
    assert model_key("loras", "../secrets") is None and model_key("nope", "x.safetensors") is None
    assert model_key("loras", "/abs.safetensors") is None
    assert split_key("loras/styles/ink.safetensors") == ("loras", "styles/ink.safetensors")
    assert split_key("loras/ink.safetensors.sha256") is None and split_key("other/x.safetensors") is None
    assert split_key("checkpoints/a/../b.safetensors") is None


def test_resolver_disk_tier_without_an_object_store(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "local.safetensors").write_bytes(b"x" * 100)
    resolver = ModelResolver(ResolverConfig(models, tmp_path / "cache", 1 << 20))
    data = b"y" * 50
    digest = hashlib.sha256(data).hexdigest()
    resolver.disk.admit(digest, [data], len(data), name="loras/cached.safetensors")
    token = runtime.bind_models_root(models)
    runtime.set_model_source(resolver)
    try:
        assert runtime.list_models("loras") == ["cached.safetensors"]
        assert runtime.list_models("checkpoints") == ["local.safetensors"]
        local = runtime.model_path("checkpoints", "local.safetensors")
        cached = runtime.model_path("loras", "cached.safetensors")
        with pytest.raises(FileNotFoundError):
            runtime.model_path("loras", "missing.safetensors")
    finally:
        runtime.set_model_source(None)
        runtime._model_dirs.reset(token)
    assert local == models / "checkpoints" / "local.safetensors"
    assert cached.name == "cached.safetensors" and cached.read_bytes() == data  # named for the loaders
    assert [r.sha256 for r in resolver.refs_for(str(cached.resolve()))] == [digest]

    entries, (disk,) = resolver.snapshot()
    assert {(e.folder, e.name, e.sha256) for e in entries} == {("loras", "cached.safetensors", digest),
                                                               ("checkpoints", "local.safetensors", "")}
    assert next(e for e in entries if e.name == "local.safetensors").last_used > 0
    assert (disk.tier, disk.hits, disk.misses, disk.bytes_used) == ("disk", 2, 0, 150)  # both files were on disk
    resolver.close()


def test_state_dicts_are_read_whole_into_memory(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(2, 3).half(),
               "d": torch.tensor(3.0), "e": torch.zeros(0, 4), "f": torch.ones(3, dtype=torch.bool),
               "g": torch.randn(5).bfloat16(), "big": torch.randn(17 << 20)}  # 68 MB
    path = tmp_path / "state.safetensors"
    save_file(tensors, str(path))
    loaded = read_state_dict(path)
    path.write_bytes(b"")  # truncated: a file-backed (mapped) tensor would now fault; these are in memory
    assert set(loaded) == set(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    assert module_bytes(loaded) == sum(t.numel() * t.element_size() for t in tensors.values())
