"""The nodes' definitions against the /object_info/{Class} answers of a real ComfyUI 0.27 (recorded).

Compared exactly: input sections, names and order, types, defaults, min/max/step and every other widget option,
combo choices, hidden inputs, outputs and their names, output node flag, category, display name, description,
search aliases. Tooltips are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpu_executor.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from tests.unit.nodes.conftest import with_input_names

pytestmark = pytest.mark.unit

OBJECT_INFO = Path(__file__).resolve().parents[3].parent / "shared" / "comfyui-transcripts" / "object_info.jsonl"


def _recorded() -> dict[str, dict[str, Any]]:
    classes: dict[str, dict[str, Any]] = {}
    if not OBJECT_INFO.is_file():
        return classes
    for line in OBJECT_INFO.read_text().splitlines():
        entry = json.loads(line)
        body = entry.get("body")
        if entry.get("kind") == "http_response" and isinstance(body, dict):
            classes.update({name: info for name, info in body.items() if isinstance(info, dict) and "input" in info})
    return classes


RECORDED = _recorded()
OURS = sorted(set(RECORDED) & set(NODE_CLASS_MAPPINGS))
# The recorded upload scenario's input directory held this one file when /object_info/LoadImage was asked.
RECORDED_INPUT_FILES = ("rec_rgba.png",)

needs_recording = pytest.mark.skipif(not RECORDED, reason="transcripts not available beside the repository")


def _normalise(spec: Any) -> Any:
    """An input spec as object_info shows it (tuples → lists), without tooltips; ("IMAGE",) ≡ ["IMAGE", {}]."""
    spec = json.loads(json.dumps(spec))
    if isinstance(spec, list):
        if len(spec) == 1:
            spec = [spec[0], {}]
        if isinstance(spec[1], dict):
            spec[1] = {k: v for k, v in spec[1].items() if k != "tooltip"}
    return spec


# ...and its checkpoints folder held these three (CheckpointLoaderSimple lists them).
RECORDED_CHECKPOINTS = ("tiny_sd15.safetensors", "tiny_sd15_l1.safetensors", "tiny_sd15_s7.safetensors")


def _inputs(cls: type[Any]) -> dict[str, Any]:
    import tempfile

    from gpu_executor.engine import runtime

    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "checkpoints").mkdir()
        for name in RECORDED_CHECKPOINTS:
            (Path(root) / "checkpoints" / name).touch()
        token = runtime.bind_models_root(Path(root))
        try:
            types: dict[str, Any] = with_input_names(RECORDED_INPUT_FILES, cls.INPUT_TYPES)
        finally:
            runtime._model_dirs.reset(token)
    return types


def _is_ordered_subset(ours: list[Any], theirs: list[Any]) -> bool:
    remaining = iter(theirs)
    return all(item in remaining for item in ours)


@needs_recording
def test_the_recording_covers_these_builtin_nodes() -> None:
    assert sorted(
        [
            "CLIPTextEncode", "CheckpointLoaderSimple", "EmptyImage", "EmptyLatentImage", "ImageBlur", "ImageInvert",
            "ImageScale", "KSampler", "LoadImage", "PreviewImage", "PrimitiveString", "SaveImage", "SolidMask",
            "VAEDecode",
        ]
    ) == OURS  # fmt: skip


@needs_recording
@pytest.mark.parametrize("name", OURS)
def test_inputs_match_comfyui(name: str) -> None:
    recorded = RECORDED[name]
    ours = _inputs(NODE_CLASS_MAPPINGS[name])
    assert sorted(ours) == sorted(recorded["input"])
    for section, entries in recorded["input"].items():
        if section == "hidden":
            assert ours[section] == entries
            continue
        assert list(ours[section]) == recorded["input_order"][section]
        for input_name, spec in entries.items():
            if (name, input_name) == ("KSampler", "sampler_name"):
                # The built-in engine implements a subset of ComfyUI's samplers, in ComfyUI's order.
                ours_spec, their_spec = _normalise(ours[section][input_name]), _normalise(spec)
                assert _is_ordered_subset(ours_spec[0], their_spec[0]) and ours_spec[1] == their_spec[1]
                continue
            assert _normalise(ours[section][input_name]) == _normalise(spec), f"{name}.{input_name}"


@needs_recording
@pytest.mark.parametrize("name", OURS)
def test_outputs_and_metadata_match_comfyui(name: str) -> None:
    recorded = RECORDED[name]
    cls = NODE_CLASS_MAPPINGS[name]
    assert list(cls.RETURN_TYPES) == recorded["output"]
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    assert list(names) == recorded["output_name"]
    assert recorded["output_is_list"] == [False] * len(recorded["output"])
    assert recorded["output_node"] == cls.OUTPUT_NODE
    assert recorded["category"] == cls.CATEGORY
    assert recorded["description"] == cls.DESCRIPTION
    assert NODE_DISPLAY_NAME_MAPPINGS[name] == recorded["display_name"]
    assert (getattr(cls, "SEARCH_ALIASES", None) or []) == (recorded.get("search_aliases") or [])
    if recorded.get("essentials_category"):
        assert getattr(cls, "ESSENTIALS_CATEGORY", None) == recorded["essentials_category"]


def test_upscale_choices_match_comfyui_lists() -> None:
    image_methods = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    latent_methods = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
    crops = ["disabled", "center"]
    for name in ("ImageScale", "ImageScaleBy", "ImageScaleToTotalPixels"):
        assert NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]["upscale_method"] == (image_methods,)
    for name in ("LatentUpscale", "LatentUpscaleBy"):
        assert NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]["upscale_method"] == (latent_methods,)
    for name in ("ImageScale", "LatentUpscale"):
        assert NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]["crop"] == (crops,)
    blend = NODE_CLASS_MAPPINGS["ImageBlend"].INPUT_TYPES()["required"]["blend_mode"]
    assert blend == (["normal", "multiply", "screen", "overlay", "soft_light", "difference"],)
