"""LATENT nodes (ComfyUI's nodes.py). LATENT is a dict {"samples": [B,C,H/8,W/8], optional "noise_mask",
optional "batch_index" (list of ints: the position of each sample in the original batch, which seeds its noise)}.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from gpu_executor.engine.runtime import check_interrupted
from gpu_executor.imaging import CROP_METHODS, LATENT_UPSCALE_METHODS, common_upscale
from gpu_executor.nodes._common import MAX_RESOLUTION, BuiltinNode, InputTypes

Latent = dict[str, Any]


class EmptyLatentImage(BuiltinNode):
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS: ClassVar[tuple[str, ...]] = ("The empty latent image batch.",)
    FUNCTION = "generate"
    CATEGORY = "model/latent"
    DESCRIPTION = "Create a new batch of empty latent images to be denoised via sampling."
    SEARCH_ALIASES: ClassVar[list[str]] = [
        "empty", "empty latent", "new latent", "create latent", "blank latent", "blank",
    ]  # fmt: skip

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "width": (
                    "INT",
                    {
                        "default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                        "tooltip": "The width of the latent images in pixels.",
                    },
                ),
                "height": (
                    "INT",
                    {
                        "default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                        "tooltip": "The height of the latent images in pixels.",
                    },
                ),
                "batch_size": (
                    "INT",
                    {"default": 1, "min": 1, "max": 4096, "tooltip": "The number of latent images in the batch."},
                ),
            }
        }  # fmt: skip

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class LatentUpscale(BuiltinNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "model/latent"

    upscale_methods: ClassVar[list[str]] = LATENT_UPSCALE_METHODS
    crop_methods: ClassVar[list[str]] = CROP_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (list(cls.upscale_methods),),
                "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                "crop": (list(cls.crop_methods),),
            }
        }

    def upscale(self, samples: Latent, upscale_method: str, width: int, height: int, crop: str) -> tuple[Latent]:
        if width == 0 and height == 0:
            return (samples,)
        out = samples.copy()
        latent = samples["samples"]
        # Sizes are in pixels (at least 64); a 0 keeps the aspect ratio from the other side.
        if width == 0:
            height = max(64, height)
            width = max(64, round(latent.shape[-1] * height / latent.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(latent.shape[-2] * width / latent.shape[-1]))
        else:
            width = max(64, width)
            height = max(64, height)
        out["samples"] = common_upscale(latent, width // 8, height // 8, upscale_method, crop)
        return (out,)


class LatentUpscaleBy(BuiltinNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "model/latent"

    upscale_methods: ClassVar[list[str]] = LATENT_UPSCALE_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (list(cls.upscale_methods),),
                "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    def upscale(self, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        out = samples.copy()
        latent = samples["samples"]
        width = round(latent.shape[-1] * scale_by)
        height = round(latent.shape[-2] * scale_by)
        out["samples"] = common_upscale(latent, width, height, upscale_method, "disabled")
        return (out,)


def _masks_for_batch(masks: torch.Tensor, batch: int) -> torch.Tensor:
    """A noise mask batch smaller than the samples' is tiled up to it (then cut)."""
    if masks.shape[0] < batch:
        masks = masks.repeat(math.ceil(batch / masks.shape[0]), 1, 1, 1)[:batch]
    return masks


class LatentFromBatch(BuiltinNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "frombatch"
    CATEGORY = "model/latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "samples": ("LATENT",),
                "batch_index": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION}),
                "length": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    def frombatch(self, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        out = samples.copy()
        latent = samples["samples"]
        size = latent.shape[0]
        if batch_index < 0:  # negative indices count from the end
            batch_index += size
        batch_index = max(0, min(size - 1, batch_index))
        length = min(size - batch_index, length)
        out["samples"] = latent[batch_index : batch_index + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:  # one mask for the whole batch stays one mask
                out["noise_mask"] = masks.clone()
            else:
                out["noise_mask"] = _masks_for_batch(masks, size)[batch_index : batch_index + length].clone()
        if "batch_index" in samples:
            out["batch_index"] = samples["batch_index"][batch_index : batch_index + length]
        else:
            out["batch_index"] = list(range(batch_index, batch_index + length))
        return (out,)


class RepeatLatentBatch(BuiltinNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "repeat"
    CATEGORY = "model/latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"samples": ("LATENT",), "amount": ("INT", {"default": 1, "min": 1, "max": 64})}}

    def repeat(self, samples: Latent, amount: int) -> tuple[Latent]:
        out = samples.copy()
        out["samples"] = samples["samples"].repeat((amount, 1, 1, 1))
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            # ComfyUI repeats the mask batch as given (a shorter mask batch is not first tiled to the samples').
            out["noise_mask"] = samples["noise_mask"].repeat((amount, 1, 1, 1))
        if "batch_index" in out:
            indices = list(out["batch_index"])
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [i + copy * offset for copy in range(1, amount) for i in indices]
        return (out,)


class LatentComposite(BuiltinNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"
    CATEGORY = "model/latent"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        position = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "samples_to": ("LATENT",),
                "samples_from": ("LATENT",),
                "x": ("INT", dict(position)),
                "y": ("INT", dict(position)),
                "feather": ("INT", dict(position)),
            }
        }

    def composite(
        self,
        samples_to: Latent,
        samples_from: Latent,
        x: int,
        y: int,
        composite_method: str = "normal",
        feather: int = 0,
    ) -> tuple[Latent]:
        # Pixel positions become latent cells (÷8); the pasted block is cut at the destination's edges.
        x, y, feather = x // 8, y // 8, feather // 8
        out = samples_to.copy()
        target = samples_to["samples"]
        pasted = samples_to["samples"].clone()
        source = samples_from["samples"][:, :, : target.shape[2] - y, : target.shape[3] - x]
        region = (slice(None), slice(None), slice(y, y + source.shape[2]), slice(x, x + source.shape[3]))
        if feather == 0:
            pasted[region] = source
        else:
            # Linear ramps (t+1)/feather on every edge of the block that is not on the destination's border.
            weight = torch.ones_like(source)
            for t in range(feather):
                check_interrupted()
                rate = (1.0 / feather) * (t + 1)
                if y != 0:
                    weight[:, :, t : 1 + t, :] *= rate
                if y + source.shape[2] < target.shape[2]:
                    weight[:, :, weight.shape[2] - 1 - t : weight.shape[2] - t, :] *= rate
                if x != 0:
                    weight[:, :, :, t : 1 + t] *= rate
                if x + source.shape[3] < target.shape[3]:
                    weight[:, :, :, weight.shape[3] - 1 - t : weight.shape[3] - t] *= rate
            pasted[region] = source * weight + pasted[region] * (torch.ones_like(weight) - weight)
        out["samples"] = pasted
        return (out,)


NODE_CLASS_MAPPINGS: dict[str, type[Any]] = {
    "EmptyLatentImage": EmptyLatentImage,
    "LatentUpscale": LatentUpscale,
    "LatentUpscaleBy": LatentUpscaleBy,
    "LatentFromBatch": LatentFromBatch,
    "RepeatLatentBatch": RepeatLatentBatch,
    "LatentComposite": LatentComposite,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "EmptyLatentImage": "Empty Latent Image",
    "LatentUpscale": "Upscale Latent",
    "LatentUpscaleBy": "Upscale Latent By",
    "LatentFromBatch": "Latent From Batch",
    "RepeatLatentBatch": "Repeat Latent Batch",
    "LatentComposite": "Latent Composite",
}
