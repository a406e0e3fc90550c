"""Node catalog entries between ComfyUI's `/object_info` JSON and `comfymesh.common.v1.NodeDefinition`.

The definition carries the exact object_info JSON (`object_info_json`) plus typed fields derived from it; the way
back uses the exact JSON when present, so nothing ComfyUI tools rely on (empty lists, explicit nulls, key order)
is lost.
"""

from __future__ import annotations

import json
from typing import Any

from comfymesh.common.v1 import catalog_pb2
from service_runtime.transport.graph_codec import value_from_proto, value_to_proto

_CATEGORIES = {"required": catalog_pb2.INPUT_CATEGORY_REQUIRED, "optional": catalog_pb2.INPUT_CATEGORY_OPTIONAL,
               "hidden": catalog_pb2.INPUT_CATEGORY_HIDDEN}
_CATEGORY_NAMES = {v: k for k, v in _CATEGORIES.items()}
_KNOWN = {"input", "input_order", "is_input_list", "output", "output_is_list", "output_name", "name",
          "display_name", "description", "python_module", "category", "output_node", "output_tooltips",
          "deprecated", "experimental", "search_aliases"}


def definition_from_object_info(name: str, info: dict[str, Any]) -> catalog_pb2.NodeDefinition:
    definition = catalog_pb2.NodeDefinition(
        name=str(info.get("name", name)), display_name=str(info.get("display_name", name)),
        description=str(info.get("description", "")), category=str(info.get("category", "")),
        python_module=str(info.get("python_module", "")), output_node=bool(info.get("output_node", False)),
        is_input_list=bool(info.get("is_input_list", False)), deprecated=bool(info.get("deprecated", False)),
        experimental=bool(info.get("experimental", False)),
        search_aliases=[str(a) for a in info.get("search_aliases") or []],
        object_info_json=json.dumps(info, separators=(",", ":"), ensure_ascii=False))
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    for category, section in inputs.items():
        names = order.get(category) or list(section or {})
        for input_name in names:
            spec = section[input_name]
            item = definition.inputs.add(name=input_name, category=_CATEGORIES.get(category, 0))
            if category == "hidden":
                item.type = str(spec)
                continue
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(kind, list):
                item.type = "COMBO"
                item.choices.extend(value_to_proto(c) for c in kind)
            else:
                item.type = str(kind)
            for key, value in options.items():
                item.options[key].CopyFrom(value_to_proto(value, f"{name}.{input_name}.{key}"))
    types = info.get("output") or []
    names_out = info.get("output_name") or types
    is_list = info.get("output_is_list") or [False] * len(types)
    tooltips = info.get("output_tooltips") or []
    for index, kind in enumerate(types):
        definition.outputs.add(type=str(kind), name=str(names_out[index]) if index < len(names_out) else str(kind),
                               is_list=bool(is_list[index]) if index < len(is_list) else False,
                               tooltip=str(tooltips[index] or "") if index < len(tooltips) else "")
    for key, value in info.items():
        if key not in _KNOWN:
            definition.extra[key].CopyFrom(value_to_proto(value, f"{name}.{key}"))
    return definition


def object_info_from_definition(definition: catalog_pb2.NodeDefinition) -> dict[str, Any]:
    if definition.object_info_json:
        exact: dict[str, Any] = json.loads(definition.object_info_json)
        return exact
    inputs: dict[str, dict[str, Any]] = {}
    order: dict[str, list[str]] = {}
    for item in definition.inputs:
        category = _CATEGORY_NAMES.get(item.category, "required")
        if category == "hidden":
            value: Any = item.type
        else:
            options = {k: value_from_proto(v) for k, v in item.options.items()}
            head: Any = [value_from_proto(c) for c in item.choices] if item.type == "COMBO" else item.type
            value = [head, options] if options else [head]
        inputs.setdefault(category, {})[item.name] = value
        order.setdefault(category, []).append(item.name)
    info: dict[str, Any] = {
        "input": inputs, "input_order": order, "is_input_list": definition.is_input_list,
        "output": [o.type for o in definition.outputs], "output_is_list": [o.is_list for o in definition.outputs],
        "output_name": [o.name for o in definition.outputs], "name": definition.name,
        "display_name": definition.display_name, "description": definition.description,
        "python_module": definition.python_module, "category": definition.category,
        "output_node": definition.output_node,
    }
    if any(o.tooltip for o in definition.outputs):
        info["output_tooltips"] = [o.tooltip for o in definition.outputs]
    if definition.deprecated:
        info["deprecated"] = True
    if definition.experimental:
        info["experimental"] = True
    if definition.search_aliases:
        info["search_aliases"] = list(definition.search_aliases)
    info.update({k: value_from_proto(v) for k, v in definition.extra.items()})
    return info
