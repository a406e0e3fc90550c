"""MASK nodes (ComfyUI's comfy_extras/nodes_mask.py). MASK is a float tensor [B,H,W]; [H,W] is accepted."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from gpu_executor.engine.runtime import check_interrupted
from gpu_executor.nodes._common import MAX_RESOLUTION, BuiltinNode, InputTypes

IMAGE_CHANNELS = ["red", "green", "blue", "alpha"]


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """[H,W] or [B,H,W] (or [B,1,H,W]) as [B,H,W]."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


class ImageToMask(BuiltinNode):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "image_to_mask"
    CATEGORY = "image/mask"
    SEARCH_ALIASES: ClassVar[list[str]] = ["extract channel", "channel to mask"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"image": ("IMAGE",), "channel": (list(IMAGE_CHANNELS),)}}

    def image_to_mask(self, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
        return (image[:, :, :, IMAGE_CHANNELS.index(channel)],)


class MaskToImage(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mask_to_image"
    CATEGORY = "image/mask"
    SEARCH_ALIASES: ClassVar[list[str]] = ["convert mask"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"mask": ("MASK",)}}

    def mask_to_image(self, mask: torch.Tensor) -> tuple[torch.Tensor]:
        grey = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1)
        return (grey.expand(-1, -1, -1, 3),)


class SolidMask(BuiltinNode):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "solid"
    CATEGORY = "image/mask"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    def solid(self, value: float, width: int, height: int) -> tuple[torch.Tensor]:
        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(BuiltinNode):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "invert"
    CATEGORY = "image/mask"
    SEARCH_ALIASES: ClassVar[list[str]] = ["reverse mask", "flip mask"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"mask": ("MASK",)}}

    def invert(self, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - mask,)


class CropMask(BuiltinNode):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "crop"
    CATEGORY = "image/mask"
    SEARCH_ALIASES: ClassVar[list[str]] = ["cut mask", "extract mask region", "mask slice"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "mask": ("MASK",),
                "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    def crop(self, mask: torch.Tensor, x: int, y: int, width: int, height: int) -> tuple[torch.Tensor]:
        return (as_batch(mask)[:, y : y + height, x : x + width],)


def _grey_morphology(masks: torch.Tensor, footprint: torch.Tensor, dilate: bool) -> torch.Tensor:
    """One step of grey dilation (max) or erosion (min) of [B,H,W] over a 3×3 footprint.

    Borders behave like scipy.ndimage's default mode "reflect" (d c b a | a b c d), which for a one-pixel reach
    is the same as repeating the edge pixel.
    """
    height, width = masks.shape[-2], masks.shape[-1]
    padded = F.pad(masks.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    result = padded[:, 1 : 1 + height, 1 : 1 + width].clone()  # the centre tap, always in the footprint
    combine = torch.maximum if dilate else torch.minimum
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1) and footprint[dy, dx]:
                result = combine(result, padded[:, dy : dy + height, dx : dx + width])
    return result


class GrowMask(BuiltinNode):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "expand_mask"
    CATEGORY = "image/mask"
    SEARCH_ALIASES: ClassVar[list[str]] = ["expand mask", "shrink mask"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "mask": ("MASK",),
                "expand": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}),
                "tapered_corners": ("BOOLEAN", {"default": True, "advanced": True}),
            }
        }

    def expand_mask(self, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple[torch.Tensor]:
        # A plus-shaped footprint with tapered corners, the full 3×3 square without; applied |expand| times.
        corner = 0 if tapered_corners else 1
        footprint = torch.tensor([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]], dtype=torch.bool)
        out = as_batch(mask).clone()
        for _ in range(abs(expand)):
            check_interrupted()
            out = _grey_morphology(out, footprint, dilate=expand > 0)
        return (out,)


class FeatherMask(BuiltinNode):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "feather"
    CATEGORY = "image/mask"
    SEARCH_ALIASES: ClassVar[list[str]] = ["soft edge mask", "blur mask edges", "gradient mask edge"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        side = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "mask": ("MASK",),
                "left": ("INT", dict(side)),
                "top": ("INT", dict(side)),
                "right": ("INT", dict(side)),
                "bottom": ("INT", dict(side)),
            }
        }

    def feather(self, mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> tuple[torch.Tensor]:
        out = as_batch(mask).clone()
        left = min(left, out.shape[-1])
        right = min(right, out.shape[-1])
        top = min(top, out.shape[-2])
        bottom = min(bottom, out.shape[-2])

        # Linear ramps (i+1)/n over the first n rows/columns from each edge. ComfyUI indexes the right and bottom
        # ramps as [-i], so their first step (i = 0) lands on column/row 0, not on the last one; kept as is.
        for i in range(left):
            check_interrupted()
            out[:, :, i] *= (i + 1.0) / left
        for i in range(right):
            check_interrupted()
            out[:, :, -i] *= (i + 1) / right
        for i in range(top):
            check_interrupted()
            out[:, i, :] *= (i + 1) / top
        for i in range(bottom):
            check_interrupted()
            out[:, -i, :] *= (i + 1) / bottom
        return (out,)


NODE_CLASS_MAPPINGS: dict[str, type[Any]] = {
    "ImageToMask": ImageToMask,
    "MaskToImage": MaskToImage,
    "SolidMask": SolidMask,
    "InvertMask": InvertMask,
    "CropMask": CropMask,
    "GrowMask": GrowMask,
    "FeatherMask": FeatherMask,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "ImageToMask": "Convert Image to Mask",
    "MaskToImage": "Convert Mask to Image",
    "SolidMask": "Create Solid Mask",
    "InvertMask": "Invert Mask",
    "CropMask": "Crop Mask",
    "GrowMask": "Grow Mask",
    "FeatherMask": "Feather Mask",
}
