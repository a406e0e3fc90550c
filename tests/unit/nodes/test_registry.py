"""The built-in pack: every node class is complete and its INPUT_TYPES are well-formed."""

from __future__ import annotations

import inspect

import pytest

from gpu_executor.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

pytestmark = pytest.mark.unit

EXPECTED = {
    "LoadImage", "LoadImageMask", "SaveImage", "PreviewImage", "EmptyImage", "ImageScale", "ImageScaleBy",
    "ImageScaleToTotalPixels", "ImageInvert", "ImageBlur", "ImageSharpen", "ImageBlend", "ImageCrop",
    "ImagePadForOutpaint", "ImageBatch", "RepeatImageBatch", "ImageCompositeMasked", "ImageToMask", "MaskToImage",
    "SolidMask", "InvertMask", "CropMask", "GrowMask", "FeatherMask", "EmptyLatentImage", "LatentUpscale",
    "LatentUpscaleBy", "LatentFromBatch", "RepeatLatentBatch", "LatentComposite", "PrimitiveInt", "PrimitiveFloat",
    "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
    # Stable Diffusion
    "CheckpointLoaderSimple", "UNETLoader", "VAELoader", "CLIPLoader", "DualCLIPLoader", "LoraLoader",
    "LoraLoaderModelOnly", "ControlNetLoader", "CLIPTextEncode", "CLIPSetLastLayer", "ConditioningCombine",
    "ConditioningSetArea", "ConditioningZeroOut", "ControlNetApply", "ControlNetApplyAdvanced", "KSampler",
    "KSamplerAdvanced", "VAEDecode", "VAEDecodeTiled", "VAEEncode", "VAEEncodeForInpaint", "SetLatentNoiseMask",
}  # fmt: skip
TYPES = {"IMAGE", "MASK", "LATENT", "INT", "FLOAT", "STRING", "BOOLEAN", "MODEL", "CLIP", "VAE", "CONDITIONING",
         "CONTROL_NET"}


def test_the_pack_has_every_node_with_a_display_name() -> None:
    assert set(NODE_CLASS_MAPPINGS) == EXPECTED
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == EXPECTED
    assert NODE_DISPLAY_NAME_MAPPINGS["LoadImage"] == "Load Image"
    assert NODE_DISPLAY_NAME_MAPPINGS["SaveImage"] == "Save Image"
    assert NODE_DISPLAY_NAME_MAPPINGS["ImageScale"] == "Upscale Image"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_node_class_is_complete(name: str) -> None:
    cls = NODE_CLASS_MAPPINGS[name]
    types = cls.INPUT_TYPES()
    assert set(types) <= {"required", "optional", "hidden"}
    assert isinstance(cls.RETURN_TYPES, tuple) and set(cls.RETURN_TYPES) <= TYPES
    if hasattr(cls, "RETURN_NAMES"):
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    assert isinstance(cls.CATEGORY, str) and cls.CATEGORY
    assert isinstance(cls.OUTPUT_NODE, bool) and isinstance(cls.DESCRIPTION, str)
    function = getattr(cls(), cls.FUNCTION)
    parameters = inspect.signature(function).parameters
    declared = {**types.get("required", {}), **types.get("optional", {})}
    for input_name in declared:  # every input reaches the function by name
        assert input_name in parameters, f"{name}.{cls.FUNCTION} lacks {input_name}"
    for input_name, spec in declared.items():
        kind = spec[0]
        assert isinstance(kind, list) or kind in TYPES, f"{name}.{input_name}"
        options = spec[1] if len(spec) > 1 else {}
        if "default" in options and "min" in options:
            assert options["min"] <= options["default"] <= options["max"], f"{name}.{input_name}"
