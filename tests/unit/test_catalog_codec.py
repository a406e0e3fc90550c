"""The node catalog survives object_info → NodeDefinition → object_info exactly (recorded ComfyUI 0.27 data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfymesh.common.v1 import catalog_pb2
from service_runtime.transport.catalog_codec import definition_from_object_info, object_info_from_definition

pytestmark = pytest.mark.unit
TRANSCRIPT = Path(__file__).resolve().parents[2].parent / "shared" / "comfyui-transcripts" / "object_info.jsonl"


def _recorded() -> dict[str, dict[str, Any]]:
    classes: dict[str, dict[str, Any]] = {}
    if not TRANSCRIPT.exists():
        return classes
    for line in TRANSCRIPT.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "http_response" and isinstance(entry.get("body"), dict):
            for name, info in entry["body"].items():
                if isinstance(info, dict) and "input" in info:
                    classes[name] = info
    return classes


RECORDED = _recorded()


@pytest.mark.skipif(not RECORDED, reason="transcripts not available beside the repository")
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_object_info_round_trips(name: str) -> None:
    info = RECORDED[name]
    definition = definition_from_object_info(name, info)
    wire = catalog_pb2.NodeDefinition.FromString(definition.SerializeToString())
    assert object_info_from_definition(wire) == info
    # The typed view, rebuilt without the exact JSON, agrees on what it models.
    wire.ClearField("object_info_json")
    typed = object_info_from_definition(wire)
    for key in ("input_order", "output", "output_name", "name", "display_name", "category", "output_node"):
        assert typed[key] == info[key]
    for category, section in info["input"].items():
        for input_name, spec in section.items():
            if category == "hidden":
                assert typed["input"][category][input_name] == spec
            else:
                assert typed["input"][category][input_name][0] == spec[0]


def test_ksampler_seed_max_is_exact() -> None:
    info = {"input": {"required": {"seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}]}},
            "input_order": {"required": ["seed"]}, "output": ["LATENT"], "name": "KSampler"}
    definition = definition_from_object_info("KSampler", info)
    assert definition.inputs[0].options["max"].uint_value == 2**64 - 1
    assert object_info_from_definition(definition)["input"]["required"]["seed"][1]["max"] == 2**64 - 1
    definition.ClearField("object_info_json")
    assert object_info_from_definition(definition)["input"]["required"]["seed"][1]["max"] == 2**64 - 1
