"""Node specs read from a node catalog (ComfyUI `/object_info` entries) instead of from node classes.

The control plane validates graphs at submit time with the executor's own validator (`validation.validate`) and
only the catalog the executors publish: no node classes, no torch. A catalog entry says everything that validator
checks except two things, which the executor checks again when it validates before running:

- what a class's `VALIDATE_INPUTS` decides: the function cannot run without the class, so it is skipped;
- the values of upload widgets (inputs with an `image_upload`-style option, or a `remote` list): their choices are
  the files of one execution, which the catalog cannot list (the executor publishes it outside any execution).
  Such inputs are *deferred* (`NodeSpec.deferred_inputs`: their built-in checks are skipped) unless the caller
  knows the execution's input files and passes them to `with_input_files`, which makes them ordinary choices.

Nothing here imports torch or generated code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from gpu_executor.engine.node_types import NodeSpec, spec_from_class
from gpu_executor.engine.registry import NodeRegistry, PackError

CATALOG_PACK = "catalog"
INPUT_ANNOTATION = " [input]"  # ComfyUI's suffix naming a file of the input directory


def is_upload_widget(options: Mapping[str, Any]) -> bool:
    """ComfyUI's marker of a combo whose choices are the files of the input directory (`image_upload`, ...)."""
    return any(value and (key == "upload" or key.endswith("_upload")) for key, value in options.items())


def _is_deferred(spec: Any, *, uploads_only: bool = False) -> bool:
    if not (isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], Mapping)):
        return False
    # A `remote` combo's choices are fetched by the front end from a URL: the catalog lists none of them.
    return is_upload_widget(spec[1]) or (not uploads_only and bool(spec[1].get("remote")))


def _ordered_inputs(info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The `input` section in declaration order (`input_order` when given, else the JSON object's order)."""
    declared = info.get("input") or {}
    if not isinstance(declared, Mapping):
        raise TypeError("`input` is not an object")
    order = info.get("input_order") or {}
    inputs: dict[str, dict[str, Any]] = {}
    for category, section in declared.items():
        if not isinstance(section, Mapping):
            raise TypeError(f"`input.{category}` is not an object")
        names = [n for n in order.get(category) or () if n in section]
        names += [n for n in section if n not in names]
        inputs[str(category)] = {str(n): section[n] for n in names}
    return inputs


def _deferred(inputs: Mapping[str, Mapping[str, Any]], *, uploads_only: bool = False) -> frozenset[str]:
    return frozenset(name for category in ("required", "optional")
                     for name, spec in (inputs.get(category) or {}).items()
                     if _is_deferred(spec, uploads_only=uploads_only))


def _not_runnable(self: object, **_: Any) -> NoReturn:
    raise RuntimeError(f"{type(self).__name__} is a catalog entry: it validates here and runs on an executor")


def _stand_in(name: str, info: Mapping[str, Any], inputs: dict[str, dict[str, Any]]) -> type:
    """A class with the V1 node attributes the entry describes, so that `spec_from_class` reads it like a node."""
    outputs = list(info.get("output") or ())
    attributes: dict[str, Any] = {
        "INPUT_TYPES": classmethod(lambda cls: inputs),
        "RETURN_TYPES": tuple(outputs),
        "RETURN_NAMES": tuple(info.get("output_name") or outputs),
        "OUTPUT_IS_LIST": tuple(info.get("output_is_list") or (False,) * len(outputs)),
        "OUTPUT_TOOLTIPS": tuple(info.get("output_tooltips") or ()),
        "OUTPUT_NODE": bool(info.get("output_node", False)),
        "INPUT_IS_LIST": bool(info.get("is_input_list", False)),
        "DEPRECATED": bool(info.get("deprecated", False)),
        "EXPERIMENTAL": bool(info.get("experimental", False)),
        "CATEGORY": str(info.get("category", "")),
        "DESCRIPTION": str(info.get("description", "")),
        "FUNCTION": "run",
        "run": _not_runnable,
        "OBJECT_INFO": info,
        "__module__": __name__,
    }
    if info.get("search_aliases"):
        attributes["SEARCH_ALIASES"] = list(info["search_aliases"])
    if info.get("essentials_category"):
        attributes["ESSENTIALS_CATEGORY"] = str(info["essentials_category"])
    return type(f"CatalogNode[{name}]", (), attributes)


def spec_from_object_info(name: str, info: Mapping[str, Any]) -> NodeSpec:
    """The spec of one catalog entry; raises TypeError when the entry is not a usable node description."""
    if not isinstance(info, Mapping):
        raise TypeError(f"catalog entry {name}: expected an object, got {type(info).__name__}")
    inputs = _ordered_inputs(info)
    spec = spec_from_class(name, _stand_in(name, info, inputs), str(info.get("display_name") or name),
                           str(info.get("python_module", "")))
    return dataclasses.replace(spec, deferred_inputs=_deferred(inputs))


def registry_from_object_info(catalog: Mapping[str, Mapping[str, Any]]) -> NodeRegistry:
    """A registry of catalog specs, by class name; an unusable entry is recorded in `errors` and skipped."""
    registry = NodeRegistry(packs=[CATALOG_PACK])
    for name, info in catalog.items():
        try:
            registry.specs[name] = spec_from_object_info(name, info)
        except Exception as exc:  # noqa: BLE001 - one bad entry must not hide the others
            registry.errors.append(PackError(CATALOG_PACK, f"{type(exc).__name__}: {exc}", name))
    return registry


def with_input_files(registry: NodeRegistry, input_files: Collection[str]) -> NodeRegistry:
    """The registry with upload widgets checked against an execution's input file names (and what the catalog
    lists), as the executor checks them; the given registry is not changed."""
    names = sorted(set(input_files))
    annotated = [f"{n}{INPUT_ANNOTATION}" for n in names]
    specs = dict(registry.specs)
    for class_name, spec in registry.specs.items():
        if not spec.deferred_inputs:
            continue
        info: Mapping[str, Any] = spec.cls.OBJECT_INFO  # type: ignore[attr-defined]
        inputs = {category: dict(section) for category, section in _ordered_inputs(info).items()}
        uploads: set[str] = set()
        for category in ("required", "optional"):
            section = inputs.get(category) or {}
            for input_name in _deferred(inputs, uploads_only=True) & section.keys():
                kind, options = section[input_name][0], dict(section[input_name][1])
                if isinstance(kind, (list, tuple)):  # V1: (choices, options)
                    listed = list(kind)
                elif kind == "COMBO":  # V3: ("COMBO", {"options": choices})
                    listed = list(options.pop("options", ()) or ())
                else:
                    continue  # not a list of choices: stays deferred
                section[input_name] = [listed + [n for n in [*names, *annotated] if n not in listed], options]
                uploads.add(input_name)
        if not uploads:
            continue
        replaced = spec_from_class(class_name, _stand_in(class_name, info, inputs), spec.display_name,
                                   spec.python_module)
        specs[class_name] = dataclasses.replace(replaced, deferred_inputs=spec.deferred_inputs - uploads)
    return NodeRegistry(specs=specs, errors=list(registry.errors), packs=list(registry.packs))


def with_extra_choices(registry: NodeRegistry, choices_for: Callable[[str], Collection[str]]) -> NodeRegistry:
    """The registry with more accepted values for combo inputs: `choices_for(input_name)` names the extra choices
    (e.g. the models a caller uploaded after the executors published their catalogs); the given registry is not
    changed, and classes none of whose combos gain a choice are shared."""
    specs = dict(registry.specs)
    for class_name, spec in registry.specs.items():
        info: Mapping[str, Any] | None = getattr(spec.cls, "OBJECT_INFO", None)
        if info is None:
            continue
        inputs = {category: dict(section) for category, section in _ordered_inputs(info).items()}
        changed = False
        for category in ("required", "optional"):
            section = inputs.get(category) or {}
            for input_name, value in list(section.items()):
                extra = choices_for(input_name)
                if not extra or not isinstance(value, (list, tuple)) or not value:
                    continue
                kind = value[0]
                options = dict(value[1]) if len(value) > 1 and isinstance(value[1], Mapping) else {}
                if isinstance(kind, (list, tuple)):
                    listed = list(kind)
                    section[input_name] = [listed + sorted(set(extra) - set(listed)), options]
                elif kind == "COMBO":
                    listed = list(options.get("options", ()) or ())
                    options["options"] = listed + sorted(set(extra) - set(listed))
                    section[input_name] = ["COMBO", options]
                else:
                    continue
                changed = True
        if changed:
            replaced = spec_from_class(class_name, _stand_in(class_name, info, inputs), spec.display_name,
                                       spec.python_module)
            specs[class_name] = dataclasses.replace(replaced, deferred_inputs=spec.deferred_inputs)
    return NodeRegistry(specs=specs, errors=list(registry.errors), packs=list(registry.packs))
