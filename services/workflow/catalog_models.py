"""The node catalog as a caller sees it: the fleet's catalog with the caller's uploaded models (ModelService)
added to the loader inputs' choices, so `GET /v1/nodes` and `GET /v1/object_info` list what a submission may
name (an executor fetches such a model from the object store on first use)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from comfymesh.common.v1 import catalog_pb2
from service_runtime.transport.catalog_codec import definition_from_object_info, object_info_from_definition
from services.workflow.validation import model_choices


def _extended(section: dict[str, Any], choices_for: Any) -> bool:
    changed = False
    for input_name, value in section.items():
        extra = choices_for(input_name)
        if not extra or not isinstance(value, list) or not value:
            continue
        if isinstance(value[0], list):
            listed = value[0]
            value[0] = listed + sorted(set(extra) - set(listed))
            changed = True
        elif value[0] == "COMBO" and len(value) > 1 and isinstance(value[1], dict):
            listed = list(value[1].get("options") or [])
            value[1]["options"] = listed + sorted(set(extra) - set(listed))
            changed = True
    return changed


def with_uploaded_models(definitions: list[catalog_pb2.NodeDefinition],
                         models: Mapping[str, Collection[str]]) -> list[catalog_pb2.NodeDefinition]:
    choices_for = model_choices(models)
    result = []
    for definition in definitions:
        info = json.loads(json.dumps(object_info_from_definition(definition)))  # a deep copy
        inputs = info.get("input") or {}
        changed = False
        for category in ("required", "optional"):
            section = inputs.get(category)
            if isinstance(section, dict):
                changed = _extended(section, choices_for) or changed
        result.append(definition_from_object_info(definition.name, info) if changed else definition)
    return result
