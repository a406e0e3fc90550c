"""The values that flow between diffusion nodes (ComfyUI's MODEL, CLIP, VAE, CONTROL_NET), and the process-wide
store that keeps loaded checkpoints across executions.

A handle is cheap and immutable: LoraLoader returns a new handle naming its LoRAs; the weights are patched when a
handle is used (sampling or text encoding) and only if the patch set differs from what is applied. So a cached
checkpoint is never changed for good, and two graphs using the same checkpoint with different LoRAs both work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpu_executor.diffusion import model_cache
from gpu_executor.diffusion.devices import Placement, choose_placement
from gpu_executor.diffusion.model_cache import ModelCache, file_key, read_state_dict
from gpu_executor.diffusion.models.controlnet import LoadedControlNet, load_controlnet
from gpu_executor.diffusion.models.detection import Architecture
from gpu_executor.diffusion.models.loader import LoadedCheckpoint, load_checkpoint, load_clip, load_unet, load_vae
from gpu_executor.diffusion.models.lora import LoraFile, LoraPatcher, load_lora

LoraSpec = tuple[str, float]  # (path, strength)


class _Patched:
    """One LoraPatcher over a set of modules, remembering which LoRAs are merged in right now."""

    def __init__(self, modules: dict[str, torch.nn.Module], key_map: Any) -> None:
        self.patcher = LoraPatcher(modules, key_map)
        self.applied: tuple[LoraSpec, ...] = ()
        self.lock = threading.Lock()

    def activate(self, loras: tuple[LoraSpec, ...], files: Mapping[str, LoraFile], *, unet: bool) -> None:
        if loras == self.applied:
            return
        self.patcher.unapply()
        for path, strength in loras:
            self.patcher.apply(files[path], strength_model=strength if unet else 0.0,
                               strength_clip=0.0 if unet else strength)
        self.applied = loras


@dataclass
class LoadedModels:
    """What one checkpoint file became, with its two patchers (the UNet's, and the text encoders')."""

    checkpoint: LoadedCheckpoint
    unet_patch: _Patched
    clip_patch: _Patched | None
    key: tuple[object, ...] = ()


def _move(value: LoadedModels, device: torch.device) -> None:
    checkpoint = value.checkpoint
    modules: list[Any] = [checkpoint.unet, *checkpoint.text_encoders.values()]
    if checkpoint.vae is not None:
        modules.append(checkpoint.vae)
    for module in modules:  # typed Any: diffusers' and transformers' .to() wrappers confuse mypy
        module.to(device)


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 16 << 30


class _LoraFiles(Mapping[str, LoraFile]):
    """LoRA files by resolved path, (re)loaded through the store when the RAM budget dropped one."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def __getitem__(self, key: str) -> LoraFile:
        path = Path(key)
        held: LoraFile | None = self._store.cache.peek(file_key(path, "lora"))
        return held if held is not None else self._store.lora(path)

    def __iter__(self) -> Iterator[str]:
        return iter([str(k[0]) for k in self._store.cache.keys() if k[-1] == "lora"])  # noqa: SIM118 - a method

    def __len__(self) -> int:
        return sum(1 for _ in self)


# Folders whose files the store can load as modules; files of other folders load as state dicts (raw tensors).
MODULE_FOLDERS = ("checkpoints", "unet", "diffusion_models", "vae", "clip", "text_encoders", "controlnet", "loras")


class ModelStore:
    """Loaded models by file identity; shared by every execution in the executor process (the RAM and GPU tiers)."""

    def __init__(self, placement: Placement | None = None, ram_budget_bytes: int | None = None,
                 device_budget_bytes: int | None = None) -> None:
        """Budgets default to half the host's RAM and 80% of the device's memory."""
        self.placement = placement or choose_placement()
        if ram_budget_bytes is None:
            ram_budget_bytes = _host_memory_bytes() // 2
        if device_budget_bytes is None:
            device_budget_bytes = (int(torch.cuda.get_device_properties(self.placement.device).total_memory * 0.8)
                                   if self.placement.device.type == "cuda" else 0)
        self.cache = ModelCache(self.placement.device, device_budget_bytes, ram_budget_bytes)
        # On a GPU, models load into RAM and move to device memory when used (and back, under the budget).
        self.load_device = torch.device("cpu") if self.placement.device.type == "cuda" else self.placement.device
        self._direct = self.placement.device.type != "cpu"  # VAEs, text encoders, ControlNets load on the device

    def ensure_on_device(self, models: LoadedModels) -> None:
        """Brings a checkpoint's modules to the compute device, moving least recently used ones back to RAM."""
        if models.key:
            self.cache.to_device(models.key, _move, models)

    def checkpoint(self, path: Path) -> LoadedModels:
        key = file_key(path, "checkpoint")

        def load() -> LoadedModels:
            loaded = load_checkpoint(path, device=self.load_device, dtype=self.placement.dtype,
                                     vae_dtype=self.placement.vae_dtype)
            unet_patch = _Patched({"unet": loaded.unet}, loaded.unet_key_map)
            clip_patch = _Patched(dict(loaded.text_encoders), None) if loaded.text_encoders else None
            return LoadedModels(loaded, unet_patch, clip_patch, key)

        value: LoadedModels = self.cache.get_or_load(key, load)
        return value

    def unet(self, path: Path) -> LoadedModels:
        """UNETLoader: a diffusion model on its own, shaped like a checkpoint without VAE or text encoders."""
        key = file_key(path, "unet")

        def load() -> LoadedModels:
            loaded = load_unet(path, device=self.load_device, dtype=self.placement.dtype)
            checkpoint = LoadedCheckpoint(path=path, architecture=loaded.architecture, unet=loaded.unet, vae=None,
                                          text_encoders={}, unet_key_map=loaded.unet_key_map)
            return LoadedModels(checkpoint, _Patched({"unet": loaded.unet}, loaded.unet_key_map), None, key)

        value: LoadedModels = self.cache.get_or_load(key, load)
        return value

    def vae(self, path: Path, scale: float) -> Any:
        return self.cache.get_or_load(file_key(path, "vae"), lambda: load_vae(
            path, device=self.placement.device, dtype=self.placement.vae_dtype, scaling_factor=scale),
            on_device=self._direct)

    def clip(self, path: Path, kind: str | None) -> Any:
        return self.cache.get_or_load(file_key(path, "clip", kind), lambda: load_clip(
            path, kind, device=self.placement.device, dtype=self.placement.dtype), on_device=self._direct)

    def controlnet(self, path: Path) -> LoadedControlNet:
        value: LoadedControlNet = self.cache.get_or_load(file_key(path, "controlnet"), lambda: load_controlnet(
            path, device=self.placement.device, dtype=self.placement.dtype), on_device=self._direct)
        return value

    def lora(self, path: Path) -> LoraFile:
        value: LoraFile = self.cache.get_or_load(file_key(path, "lora"), lambda: load_lora(path))
        return value

    def lora_files(self) -> Mapping[str, LoraFile]:
        return _LoraFiles(self)

    def state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        """A model file of a folder without a module loader (upscale models, embeddings, ...), as raw tensors."""
        value: dict[str, torch.Tensor] = self.cache.get_or_load(file_key(path, "state_dict"),
                                                                lambda: read_state_dict(path))
        return value

    def preload(self, folder: str, path: Path, *, to_device: bool) -> None:
        """Loads a model file the way its folder's loader node would (PrefetchModels, preloading), and moves it to
        the compute device when asked and it can move."""
        if folder == "checkpoints":
            models = self.checkpoint(path)
        elif folder in ("unet", "diffusion_models"):
            models = self.unet(path)
        else:
            if folder == "vae":
                self.vae(path, 0.18215)
            elif folder in ("clip", "text_encoders"):
                self.clip(path, None)
            elif folder == "controlnet":
                self.controlnet(path)
            elif folder == "loras":
                self.lora(path)
            else:
                self.state_dict(path)
            return
        if to_device:
            self.ensure_on_device(models)


_store: ModelStore | None = None
_store_lock = threading.Lock()


def current_store() -> ModelStore | None:
    """The store if something created it (nothing is loaded otherwise)."""
    return _store


def model_store() -> ModelStore:
    """The executor process's store (created on first use, so the engine imports without loading torch models)."""
    global _store
    with _store_lock:
        if _store is None:
            _store = ModelStore(ram_budget_bytes=model_cache.budgets.get("ram"),
                                device_budget_bytes=model_cache.budgets.get("device"))
        return _store


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: a UNet, how it samples, and the LoRAs (path, strength) merged into it when it runs."""

    models: LoadedModels
    loras: tuple[LoraSpec, ...] = ()

    @property
    def architecture(self) -> Architecture:
        return self.models.checkpoint.architecture

    def with_lora(self, path: str, strength: float) -> ModelHandle:
        return ModelHandle(self.models, (*self.loras, (path, strength)))

    def activate(self) -> Any:
        """Merges this handle's LoRAs into the UNet (if others are merged, restores first); returns the UNet."""
        model_store().ensure_on_device(self.models)
        patch = self.models.unet_patch
        with patch.lock:
            patch.activate(self.loras, model_store().lora_files(), unet=True)
        return self.models.checkpoint.unet


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: the text encoders of a family, which layer to read, and their LoRAs."""

    family: str  # "sd1", "sd2", "sdxl", "sdxl_refiner"
    encoders: dict[str, Any]
    patch: _Patched | None
    layer_idx: int | None = None  # CLIPSetLastLayer; None = the family's default
    loras: tuple[LoraSpec, ...] = field(default=())
    models: LoadedModels | None = None  # the checkpoint they came from (to bring to the device)

    def with_lora(self, path: str, strength: float) -> ClipHandle:
        return ClipHandle(self.family, self.encoders, self.patch, self.layer_idx, (*self.loras, (path, strength)),
                          self.models)

    def with_layer(self, layer_idx: int) -> ClipHandle:
        return ClipHandle(self.family, self.encoders, self.patch, layer_idx, self.loras, self.models)

    def activate(self) -> None:
        if self.models is not None:
            model_store().ensure_on_device(self.models)
        if self.patch is not None:
            with self.patch.lock:
                self.patch.activate(self.loras, model_store().lora_files(), unet=False)


@dataclass(frozen=True)
class VaeHandle:
    vae: Any
    latent_scale: float
    models: LoadedModels | None = None

    def activate(self) -> Any:
        if self.models is not None:
            model_store().ensure_on_device(self.models)
        return self.vae
