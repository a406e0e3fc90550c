"""What a running node can reach: its execution's context, a progress bar, and the interrupt check.

Nodes written for ComfyUI report progress with `comfy.utils.ProgressBar` and check for interruption with
`comfy.model_management.throw_exception_if_processing_interrupted()`. The engine offers the same two operations
here, bound per node through a contextvar, so nothing is global: two executions in one process (tests) or a
node's worker threads that copy the context each see their own.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol


class ExecutionInterrupted(Exception):  # noqa: N818 - the name says what happened, like ComfyUI's
    """Raised inside a node when its execution was interrupted; the engine ends the run as cancelled."""


@dataclass
class NodeRuntime:
    """The per-node view of a running execution."""

    execution_id: str
    node_id: str
    class_type: str
    prompt: dict[str, Any]  # the whole graph in API format (SaveImage embeds it in PNGs)
    extra_pnginfo: dict[str, Any]
    input_dir: Path  # where the execution's input files are (LoadImage reads here)
    output_dir: Path  # where output nodes write (SaveImage)
    temp_dir: Path  # where preview nodes write (PreviewImage)
    inputs: dict[str, Path] = field(default_factory=dict)  # input file name → path (LoadImage choices)
    report_progress: Callable[[int, int, Any], None] = lambda value, total, preview: None
    is_interrupted: Callable[[], bool] = lambda: False

    def check_interrupted(self) -> None:
        if self.is_interrupted():
            raise ExecutionInterrupted(f"execution {self.execution_id} interrupted at node {self.node_id}")


_current: contextvars.ContextVar[NodeRuntime | None] = contextvars.ContextVar("node_runtime", default=None)


def current() -> NodeRuntime:
    """The runtime of the node running now; raises outside a node (e.g. a node class used directly in a test)."""
    runtime = _current.get()
    if runtime is None:
        raise RuntimeError("no node is running in this context")
    return runtime


def bind(runtime: NodeRuntime | None) -> contextvars.Token[NodeRuntime | None]:
    return _current.set(runtime)


def unbind(token: contextvars.Token[NodeRuntime | None]) -> None:
    _current.reset(token)


def check_interrupted() -> None:
    """Call between units of work (every sampler step); raises ExecutionInterrupted when interrupted."""
    runtime = _current.get()
    if runtime is not None:
        runtime.check_interrupted()


class ProgressBar:
    """ComfyUI's progress bar: `update(n)` adds steps, `update_absolute(value, total, preview)` sets them.

    Each update checks for interruption first, so a long loop that reports progress is also interruptible.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0
        self._runtime = _current.get()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total) if self.total else value
        if self._runtime is not None:
            self._runtime.check_interrupted()
            self._runtime.report_progress(self.current, self.total, preview)

    def update(self, value: int = 1) -> None:
        self.update_absolute(self.current + value, self.total)


# The execution's input file names, bound for the whole run (validation included), so that nodes like LoadImage
# can offer them as combo choices the way ComfyUI lists its input directory.
_input_names: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("input_names", default=())


def bind_input_names(names: tuple[str, ...]) -> contextvars.Token[tuple[str, ...]]:
    return _input_names.set(tuple(sorted(names)))


def available_input_files() -> list[str]:
    """Names of the current execution's input files; empty outside an execution (e.g. for the catalog)."""
    return list(_input_names.get())


# Model folders in ComfyUI's terms ("checkpoints", "loras", "vae", ...): where loader nodes list and find files.
# Bound per execution (or per process by the executor), like the input names.
_model_dirs: contextvars.ContextVar[Mapping[str, tuple[Path, ...]]] = contextvars.ContextVar(
    "model_dirs", default=MappingProxyType({}))

MODEL_FOLDERS = ("checkpoints", "loras", "vae", "controlnet", "upscale_models", "embeddings", "clip",
                 "text_encoders", "unet", "diffusion_models", "clip_vision")
MODEL_EXTENSIONS = (".safetensors", ".sft")


def bind_models_root(root: Path | None) -> contextvars.Token[Mapping[str, tuple[Path, ...]]]:
    """Binds `root/<folder>` for every ComfyUI model folder (a ComfyUI `models/` directory layout)."""
    folders = {name: (root / name,) for name in MODEL_FOLDERS} if root is not None else {}
    return _model_dirs.set(folders)


class ModelSource(Protocol):
    """Where model files come from besides the bound folders (the executor's disk cache and object store)."""

    def names(self, folder: str) -> list[str]:
        """Names this source can provide in a folder."""
        ...

    def path(self, folder: str, name: str) -> Path | None:
        """The local file for a name the folders lack (may download it), or None when the source has none."""
        ...

    def used_local(self, folder: str, name: str, path: Path) -> None:
        """A name was found in the bound folders (for the source's statistics and reports)."""
        ...


_source: ModelSource | None = None


TENANTS_DIR = "tenants"  # ModelService's "<folder>/tenants/<tenant>/<name>": a tenant's own uploaded models
DEFAULT_TENANT = "default"
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("comfymesh_tenant", default="")


def bind_tenant(tenant: str) -> contextvars.Token[str]:
    """Binds the tenant of the running job: its own models are found first under their plain names."""
    return _tenant.set(tenant)


def unbind_tenant(token: contextvars.Token[str]) -> None:
    _tenant.reset(token)


def _is_tenant_path(name: str) -> bool:
    return name.replace("\\", "/").split("/", 1)[0] == TENANTS_DIR


def set_model_source(source: ModelSource | None) -> None:
    """Process-wide (the executor's worker sets it once): consulted after the bound folders."""
    global _source
    _source = source


def _local_models(folder: str) -> set[str]:
    names: set[str] = set()
    for directory in _model_dirs.get().get(folder, ()):
        if directory.is_dir():
            names.update(str(p.relative_to(directory)) for p in directory.rglob("*")
                         if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)
    return names


def list_models(folder: str) -> list[str]:
    """Model files of a folder, as names relative to it (subfolders with "/"), sorted; with the model source's
    names (models it can fetch) when one is set; empty when nothing is bound."""
    names = _local_models(folder)
    if _source is not None:
        names.update(_source.names(folder))
    # Tenants' own models are not offered to everyone; a job sees its tenant's under their plain names.
    tenant = _tenant.get()
    own = f"{TENANTS_DIR}/{tenant}/"
    mine = {n[len(own):] for n in names if tenant and tenant != DEFAULT_TENANT and n.startswith(own)}
    return sorted({n for n in names if not _is_tenant_path(n)} | mine)


def local_model_path(folder: str, name: str) -> Path | None:
    """The file for a model name in the bound folders, or None; refuses names that escape the folder."""
    for directory in _model_dirs.get().get(folder, ()):
        # Lexical check, not resolve(): operators often symlink model files from shared storage, and that is fine;
        # what is refused is a *name* that climbs out of the folder ("../../etc/passwd").
        candidate = Path(os.path.normpath(directory / name))
        if candidate.is_relative_to(Path(os.path.normpath(directory))) and candidate.is_file():
            return candidate
    return None


def model_path(folder: str, name: str) -> Path:
    """The file for a model name: the job's tenant's own model first (when a tenant is bound), then the bound
    folders, then the model source (which may download it). A graph cannot name another tenant's model: names
    under "tenants/" are refused."""
    if _is_tenant_path(name):
        raise FileNotFoundError(f"model {name!r} not found in {folder}")
    tenant = _tenant.get()
    if tenant and tenant != DEFAULT_TENANT and _source is not None:
        own = _source.path(folder, f"{TENANTS_DIR}/{tenant}/{name}")
        if own is not None:
            return own
    local = local_model_path(folder, name)
    if local is not None:
        if _source is not None:
            _source.used_local(folder, name, local)
        return local
    if _source is not None:
        fetched = _source.path(folder, name)
        if fetched is not None:
            return fetched
    raise FileNotFoundError(f"model {name!r} not found in {folder}")
