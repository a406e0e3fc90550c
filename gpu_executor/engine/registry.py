"""The node catalog: the built-in pack plus custom node packs loaded from directories.

A pack is what ComfyUI calls a custom node: a Python package (a directory with `__init__.py`) or a single `.py`
file that exposes `NODE_CLASS_MAPPINGS` (and optionally `NODE_DISPLAY_NAME_MAPPINGS`). A pack that fails to
import, or a class that is not a usable node, is recorded and skipped; it never stops the others from loading.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import sys
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gpu_executor.engine.node_types import NodeSpec, object_info, spec_from_class

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackError:
    """A pack or class that could not be loaded, with the reason (shown by Describe and the runner)."""

    pack: str
    error: str
    node_class: str = ""


@dataclass
class NodeRegistry:
    specs: dict[str, NodeSpec] = field(default_factory=dict)
    errors: list[PackError] = field(default_factory=list)
    packs: list[str] = field(default_factory=list)

    def get(self, class_type: str) -> NodeSpec | None:
        return self.specs.get(class_type)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self.specs

    def add_mappings(self, pack: str, mappings: Mapping[str, Any], display_names: Mapping[str, str] | None = None,
                     python_module: str = "nodes") -> int:
        """Registers a pack's classes; returns how many were usable. A later pack may override a class."""
        added = 0
        for name, cls in mappings.items():
            try:
                self.specs[name] = spec_from_class(name, cls, (display_names or {}).get(name), python_module)
                added += 1
            except Exception as exc:  # noqa: BLE001 - a broken class is reported, not fatal
                self.errors.append(PackError(pack, f"{type(exc).__name__}: {exc}", name))
                log.warning("skipping node class %s from %s: %s", name, pack, exc)
        self.packs.append(pack)
        return added

    def load_module(self, module: ModuleType, pack: str, python_module: str) -> None:
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if not isinstance(mappings, Mapping):
            self.errors.append(PackError(pack, "no NODE_CLASS_MAPPINGS dict"))
            return
        display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None)
        self.add_mappings(pack, mappings, display if isinstance(display, Mapping) else None, python_module)

    def load_directory(self, directory: Path) -> None:
        """Loads every pack in a custom-nodes directory (subpackages and single files), in name order."""
        if not directory.is_dir():
            self.errors.append(PackError(str(directory), "custom nodes directory does not exist"))
            return
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith((".", "_")) or entry.name.endswith(".disabled"):
                continue
            if entry.is_dir() and (entry / "__init__.py").exists():
                self._import_pack(entry.name, entry / "__init__.py", is_package=True)
            elif entry.is_file() and entry.suffix == ".py":
                self._import_pack(entry.stem, entry, is_package=False)

    def _import_pack(self, name: str, path: Path, *, is_package: bool) -> None:
        module_name = f"comfymesh_custom_nodes.{name}"
        try:
            spec = importlib.util.spec_from_file_location(
                module_name, path, submodule_search_locations=[str(path.parent)] if is_package else None)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # relative imports inside the pack need it registered
            spec.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a pack must not stop the executor either
            sys.modules.pop(module_name, None)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.errors.append(PackError(name, detail))
            log.warning("custom node pack %s failed to import: %s", name, detail)
            return
        self.load_module(module, name, f"custom_nodes.{name}")

    def catalog(self) -> dict[str, dict[str, Any]]:
        """The whole catalog in ComfyUI's `/object_info` shape, by class name."""
        return {name: object_info(spec) for name, spec in sorted(self.specs.items())}

    def catalog_hash(self) -> str:
        """Changes when any class's definition changes (executors compare catalogs by it)."""
        return catalog_digest(self.catalog())


def catalog_digest(catalog: dict[str, Any]) -> str:
    """The hash of a catalog in ComfyUI's /object_info shape (model lists included)."""
    return hashlib.sha256(json.dumps(catalog, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_registry(custom_node_dirs: Iterable[Path] = (), *, builtin: bool = True) -> NodeRegistry:
    """The built-in pack (imports torch) and then each custom-nodes directory."""
    registry = NodeRegistry()
    if builtin:
        nodes = importlib.import_module("gpu_executor.nodes")
        registry.load_module(nodes, "builtin", "nodes")
    for directory in custom_node_dirs:
        registry.load_directory(Path(directory))
    return registry
