"""Node classes as the engine sees them: ComfyUI's V1 node API (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...) parsed
once into a `NodeSpec`, and exported in the shape of ComfyUI's `/object_info`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PRIMITIVE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN"})
ANY_TYPE = "*"


@dataclass(frozen=True)
class InputDef:
    """One declared input. `choices` is set for COMBO inputs (a list of allowed values)."""

    name: str
    category: str  # "required" | "optional" | "hidden"
    type: str  # "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", a link type such as "IMAGE", or a hidden kind
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[Any, ...] | None = None

    @property
    def is_combo(self) -> bool:
        return self.choices is not None

    @property
    def accepts_literal(self) -> bool:
        """Widgets take literal values; other types (IMAGE, MODEL, ...) only come through links."""
        return self.is_combo or self.type in PRIMITIVE_TYPES or self.options.get("forceInput") is False


def _parse_input(name: str, category: str, spec: Any) -> InputDef:
    if category == "hidden":
        return InputDef(name, category, str(spec))
    if not isinstance(spec, (tuple, list)) or not spec:
        raise TypeError(f"input {name!r}: expected (type, options), got {spec!r}")
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(kind, (list, tuple)):
        return InputDef(name, category, "COMBO", options, tuple(kind))
    if kind == "COMBO":  # the V3 spelling: ("COMBO", {"options": [...]})
        return InputDef(name, category, "COMBO", options, tuple(options.get("options", ())))
    return InputDef(name, category, str(kind), options)


@dataclass(frozen=True)
class NodeSpec:
    """Everything the engine needs to know about a node class, read from the class once."""

    name: str
    cls: type
    display_name: str
    category: str
    description: str
    python_module: str
    function: str
    return_types: tuple[str, ...]
    return_names: tuple[str, ...]
    output_is_list: tuple[bool, ...]
    output_tooltips: tuple[str, ...]
    output_node: bool
    input_is_list: bool
    deprecated: bool
    experimental: bool
    has_is_changed: bool
    has_validate_inputs: bool
    # Inputs whose literal values only the node itself can judge, so their built-in checks (combo choices,
    # min/max) are skipped, as for inputs VALIDATE_INPUTS takes over. Set for specs read from a catalog
    # (catalog_registry): an upload widget's choices are the files of one execution, known on the executor only.
    deferred_inputs: frozenset[str] = frozenset()

    def input_defs(self) -> dict[str, InputDef]:
        """Inputs in declaration order. INPUT_TYPES is called each time: like ComfyUI, a node may list
        choices that depend on the moment (LoadImage lists the execution's input files)."""
        declared = self.cls.INPUT_TYPES()  # type: ignore[attr-defined]
        defs: dict[str, InputDef] = {}
        for category in ("required", "optional", "hidden"):
            for name, spec in (declared.get(category) or {}).items():
                defs[name] = _parse_input(name, category, spec)
        return defs

    @property
    def validate_inputs_params(self) -> tuple[set[str], bool]:
        """The parameter names of VALIDATE_INPUTS and whether it takes **kwargs."""
        signature = inspect.signature(self.cls.VALIDATE_INPUTS)  # type: ignore[attr-defined]
        names = {p.name for p in signature.parameters.values()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        has_kwargs = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        return names, has_kwargs


def spec_from_class(name: str, cls: type, display_name: str | None = None, python_module: str = "nodes") -> NodeSpec:
    """Reads a V1 node class; raises TypeError when the class is not a usable node."""
    for required in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
        if not hasattr(cls, required):
            raise TypeError(f"node class {name} has no {required}")
    return_types = tuple(str(t) if not isinstance(t, (list, tuple)) else "COMBO" for t in cls.RETURN_TYPES)  # type: ignore[attr-defined]
    names = tuple(getattr(cls, "RETURN_NAMES", None) or return_types)
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * len(return_types))
    if len(names) != len(return_types) or len(is_list) != len(return_types):
        raise TypeError(f"node class {name}: RETURN_NAMES/OUTPUT_IS_LIST do not match RETURN_TYPES")
    function = str(cls.FUNCTION)  # type: ignore[attr-defined]
    if not callable(getattr(cls, function, None)):
        raise TypeError(f"node class {name}: FUNCTION {function!r} is not a method")
    spec = NodeSpec(
        name=name, cls=cls, display_name=display_name or name, category=str(getattr(cls, "CATEGORY", "")),
        description=str(getattr(cls, "DESCRIPTION", "")), python_module=python_module, function=function,
        return_types=return_types, return_names=tuple(str(n) for n in names), output_is_list=is_list,
        output_tooltips=tuple(getattr(cls, "OUTPUT_TOOLTIPS", ()) or ()),
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)), input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        deprecated=bool(getattr(cls, "DEPRECATED", False)), experimental=bool(getattr(cls, "EXPERIMENTAL", False)),
        has_is_changed=callable(getattr(cls, "IS_CHANGED", None)),
        has_validate_inputs=callable(getattr(cls, "VALIDATE_INPUTS", None)),
    )
    spec.input_defs()  # INPUT_TYPES must parse now, not at the first execution
    return spec


def object_info(spec: NodeSpec) -> dict[str, Any]:
    """The class in ComfyUI's `/object_info/{class}` JSON shape."""
    declared = spec.cls.INPUT_TYPES()  # type: ignore[attr-defined]
    inputs: dict[str, Any] = {}
    order: dict[str, list[str]] = {}
    for category in ("required", "optional", "hidden"):
        section = declared.get(category)
        if section:
            inputs[category] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
            order[category] = list(section)
    info: dict[str, Any] = {
        "input": inputs, "input_order": order, "is_input_list": spec.input_is_list,
        "output": list(spec.return_types), "output_is_list": list(spec.output_is_list),
        "output_name": list(spec.return_names), "name": spec.name, "display_name": spec.display_name,
        "description": spec.description, "python_module": spec.python_module, "category": spec.category,
        "output_node": spec.output_node,
    }
    if spec.output_tooltips:
        info["output_tooltips"] = list(spec.output_tooltips)
    aliases = getattr(spec.cls, "SEARCH_ALIASES", None)
    if aliases:
        info["search_aliases"] = list(aliases)
    essentials = getattr(spec.cls, "ESSENTIALS_CATEGORY", None)
    if essentials:
        info["essentials_category"] = str(essentials)
    if spec.deprecated:
        info["deprecated"] = True
    if spec.experimental:
        info["experimental"] = True
    return info
