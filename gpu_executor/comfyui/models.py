"""The executor's models, as ComfyUI sees them.

ComfyUI reads model folders from an extra model paths file (`--extra-model-paths-config`). The executor writes one
naming two roots, both in ComfyUI's folder layout (checkpoints/, loras/, vae/, ...):

- `COMFYMESH_MODELS_DIR`, the models directory (when configured);
- a per-executor *view* directory of symbolic links. PrefetchModels resolves each name through the model tiers
  (`ModelResolver`: the disk cache, downloading from the models bucket when only the bucket has it) and links the
  cached file into the view as `<folder>/<name>`, so ComfyUI lists and loads it under its own name.

That is the whole integration: ComfyUI loads what it lists (its RAM and GPU caches are its own business), so a
prefetch to any tier brings the model to the disk tier and makes it visible; models the bucket holds but nobody
prefetched are not listed until they are, or until a graph names them: before posting a graph the backend fetches
the shared models it names that ComfyUI does not list yet, as the built-in engine fetches on first use. Tenants'
private models are not linked here (the view is shared by every tenant's graphs); built-in executors serve them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from gpu_executor.engine.runtime import MODEL_FOLDERS
from gpu_executor.model_tiers.resolver import ModelResolver, ResolverConfig
from gpu_executor.model_tiers.state import CachedEntry, CacheState, PrefetchOutcome, TierStats
from service_runtime.errors import ServiceError

# ComfyUI's model folders (its folder_paths names) the extra paths file maps; ours first.
COMFYUI_FOLDERS = tuple(dict.fromkeys((*MODEL_FOLDERS, "style_models", "gligen", "hypernetworks", "photomaker",
                                       "vae_approx", "latent_upscale_models", "model_patches", "audio_encoders",
                                       "configs")))


def extra_model_paths(models_dir: Path | None, view_dir: Path) -> str:
    """The YAML of ComfyUI's extra model paths file for the models directory and the view."""
    sections = []
    for section, root in (("comfymesh_models", models_dir), ("comfymesh_view", view_dir)):
        if root is None:
            continue
        lines = [f"{section}:", f"    base_path: {_quoted(str(root.resolve()))}"]
        lines += [f"    {folder}: {folder}/" for folder in COMFYUI_FOLDERS]
        sections.append("\n".join(lines))
    return "\n".join(sections) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ModelView:
    def __init__(self, models_dir: Path | None, view_dir: Path, resolver: ResolverConfig | None) -> None:
        self.models_dir = models_dir
        self.view_dir = view_dir
        self._resolver_config = resolver
        self._resolver: ModelResolver | None = None

    def write_paths_file(self, path: Path) -> None:
        for folder in COMFYUI_FOLDERS:
            (self.view_dir / folder).mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(extra_model_paths(self.models_dir, self.view_dir))

    def _local(self, folder: str, name: str) -> Path | None:
        for root in (self.models_dir, self.view_dir):
            candidate = root / folder / name if root is not None else None
            if candidate is not None and candidate.is_file():
                return candidate
        return None

    def unlisted(self, names: Iterable[str]) -> list[str]:
        """The names ComfyUI does not list yet (neither in the models directory nor in the view)."""
        return [name for name in dict.fromkeys(names)
                if not any(self._local(folder, model) for folder, model in self._candidates(name))]

    def _candidates(self, name: str) -> list[tuple[str, str]]:
        """(folder, name) places a model named bare or as "folder/name" may be."""
        folder, _, rest = name.partition("/")
        found = [(folder, rest)] if folder in COMFYUI_FOLDERS and rest else []
        return found + [(f, name) for f in MODEL_FOLDERS]

    def _resolve(self, name: str) -> tuple[str, str, Path] | None:
        """The model's folder, name and local file, fetched into the disk cache when only the bucket has it."""
        if any(part in ("", "..", ".") for part in name.split("/")) or name.startswith("/"):
            return None
        candidates = self._candidates(name)
        for folder, model in candidates:
            local = self._local(folder, model)
            if local is not None:
                return folder, model, local
        if self._resolver_config is None:
            return None
        if self._resolver is None:
            self._resolver = ModelResolver(self._resolver_config)
        for folder, model in candidates:
            path = self._resolver.path(folder, model)
            if path is not None:
                return folder, model, self._link(folder, model, path)
        return None

    def _link(self, folder: str, name: str, target: Path) -> Path:
        link = self.view_dir / folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target.resolve())
        os.replace(temporary, link)  # atomic: ComfyUI never lists a half-made link
        return link

    def prefetch(self, names: tuple[str, ...]) -> PrefetchOutcome:
        """Brings each model to the disk tier and into ComfyUI's lists (blocking: run it in a thread)."""
        started = time.perf_counter()
        found: list[CachedEntry] = []
        missing: list[str] = []
        try:
            for name in names:
                where = self._resolve(name)
                if where is None:
                    missing.append(name)
                    continue
                folder, model, path = where
                found.append(CachedEntry(model, folder, "disk", path.stat().st_size, time.time()))
        except ServiceError as exc:
            return PrefetchOutcome(error=exc.message, error_code=exc.code.name, error_reason=str(exc.reason),
                                   seconds=time.perf_counter() - started)
        if missing:
            return PrefetchOutcome(missing=tuple(missing), seconds=time.perf_counter() - started)
        return PrefetchOutcome(models=tuple(found), seconds=time.perf_counter() - started)

    def state(self) -> CacheState:
        """The view's models (the disk tier ComfyUI sees beyond the models directory)."""
        entries = []
        used = 0
        for folder in COMFYUI_FOLDERS:
            directory = self.view_dir / folder
            for link in sorted(directory.rglob("*")) if directory.is_dir() else ():
                if link.is_file():
                    size = link.stat().st_size
                    used += size
                    entries.append(CachedEntry(link.relative_to(directory).as_posix(), folder, "disk", size))
        return CacheState("cpu", tuple(entries), (TierStats("disk", 0, 0, 0, 0.0, used, 0),))

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.close()
