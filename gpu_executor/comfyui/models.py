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
the shared models it names that ComfyUI does not list yet, as the built-in engine fetches on first use.

A tenant's own models (ModelService's `<folder>/tenants/<tenant>/<name>`) are found as the built-in engine finds
them: a graph names one by its plain name, and the job's tenant's model wins over a shared one of the same name.
Before posting, the backend links the tenant's model into the view as `<folder>/tenants/<tenant>/<name>` and
rewrites the graph's value to that path, which ComfyUI lists. The view is shared by every tenant's jobs, so those
names must never reach anyone else: they are removed from the catalog the executor reports (`without_tenant_models`),
and a graph that names a `tenants/...` path itself is refused before it reaches ComfyUI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpu_executor.engine.model_inputs import is_model_input
from gpu_executor.engine.runtime import DEFAULT_TENANT, MODEL_FOLDERS, TENANTS_DIR
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


def is_tenant_path(name: str) -> bool:
    """A name under "tenants/": a tenant's storage path, which graphs may not name."""
    return name.replace("\\", "/").split("/", 1)[0] == TENANTS_DIR


def without_tenant_models(catalog: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's /object_info with the tenants' private models removed from the loader inputs' choices.

    ComfyUI lists every file under its model folders, the view's `tenants/<tenant>/...` links included; the
    catalog the fleet serves to every caller must not. Both ComfyUI shapes of a combo are handled: the legacy
    `[[choice, ...], {...}]` and `["COMBO", {"options": [choice, ...]}]`.
    """
    cleaned: dict[str, Any] = {}
    for class_name, info in catalog.items():
        inputs = info.get("input") if isinstance(info, dict) else None
        if not isinstance(inputs, dict):
            cleaned[class_name] = info
            continue
        sections = {}
        for section, specs in inputs.items():
            if isinstance(specs, dict):
                specs = {name: _without_tenant_choices(spec) if is_model_input(name) else spec
                         for name, spec in specs.items()}
            sections[section] = specs
        cleaned[class_name] = {**info, "input": sections}
    return cleaned


def _without_tenant_choices(spec: Any) -> Any:
    if not isinstance(spec, list) or not spec:
        return spec
    head = spec[0]
    if isinstance(head, list):
        return [[c for c in head if not (isinstance(c, str) and is_tenant_path(c))], *spec[1:]]
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list):
        options = [c for c in spec[1]["options"] if not (isinstance(c, str) and is_tenant_path(c))]
        return [head, {**spec[1], "options": options}, *spec[2:]]
    return spec


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

    def tenant_model(self, name: str, tenant: str) -> str | None:
        """The name ComfyUI lists the tenant's own model `name` under (`tenants/<tenant>/<name>`), linked into the
        view and fetched into the disk tier first when only the bucket has it; None when the tenant has no model
        of that name (or is the default tenant, whose models are the shared ones). Blocking: run it in a thread."""
        if not tenant or tenant == DEFAULT_TENANT or not _is_plain_name(tenant) or not _is_safe_path(name):
            return None
        for folder, model in self._candidates(name):
            private = f"{TENANTS_DIR}/{tenant}/{model}"
            if self._local(folder, private) is not None:
                return private
        if self._resolver_config is None:
            return None
        if self._resolver is None:
            self._resolver = ModelResolver(self._resolver_config)
        for folder, model in self._candidates(name):
            private = f"{TENANTS_DIR}/{tenant}/{model}"
            path = self._resolver.path(folder, private)
            if path is not None:
                self._link(folder, private, path)
                return private
        return None

    def _resolve(self, name: str) -> tuple[str, str, Path] | None:
        """The model's folder, name and local file, fetched into the disk cache when only the bucket has it."""
        if not _is_safe_path(name):
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


def _is_safe_path(name: str) -> bool:
    """A relative name that stays inside its folder (no empty, "." or ".." parts, not absolute)."""
    return not name.startswith("/") and not any(part in ("", "..", ".") for part in name.split("/"))


def _is_plain_name(segment: str) -> bool:
    return _is_safe_path(segment) and "/" not in segment and "\\" not in segment
