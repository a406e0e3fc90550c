"""IMAGE nodes: creation, scaling, filters, blending, cropping, padding, batching and masked compositing.

IMAGE is a float tensor [B,H,W,C] in 0..1. Each node follows ComfyUI's node of the same name (nodes.py,
comfy_extras/nodes_images.py, nodes_post_processing.py, nodes_mask.py), including its edge cases.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from gpu_executor.imaging import CROP_METHODS, IMAGE_UPSCALE_METHODS, common_upscale
from gpu_executor.nodes._common import (
    MAX_RESOLUTION,
    BuiltinNode,
    InputTypes,
    composite,
    image_alpha_fix,
)

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


class EmptyImage(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
            }
        }

    def generate(self, width: int, height: int, batch_size: int = 1, color: int = 0) -> tuple[torch.Tensor]:
        planes = [torch.full([batch_size, height, width, 1], ((color >> shift) & 0xFF) / 0xFF) for shift in (16, 8, 0)]
        return (torch.cat(planes, dim=-1),)


def _scale(image: torch.Tensor, method: str, width: int, height: int, crop: str) -> torch.Tensor:
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


class ImageScale(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"
    ESSENTIALS_CATEGORY: ClassVar[str] = "Image Tools"
    SEARCH_ALIASES: ClassVar[list[str]] = [
        "resize", "resize image", "scale image", "image resize", "zoom", "zoom in", "change size",
    ]  # fmt: skip

    upscale_methods: ClassVar[list[str]] = IMAGE_UPSCALE_METHODS
    crop_methods: ClassVar[list[str]] = CROP_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (list(cls.upscale_methods),),
                "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "crop": (list(cls.crop_methods),),
            }
        }

    def upscale(
        self, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[torch.Tensor]:
        if width == 0 and height == 0:
            return (image,)
        src_h, src_w = image.shape[1], image.shape[2]
        if width == 0:  # keep the aspect ratio from the given height
            width = max(1, round(src_w * height / src_h))
        elif height == 0:
            height = max(1, round(src_h * width / src_w))
        return (_scale(image, upscale_method, width, height, crop),)


class ImageScaleBy(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"
    ESSENTIALS_CATEGORY: ClassVar[str] = "Image Tools"

    upscale_methods: ClassVar[list[str]] = IMAGE_UPSCALE_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (list(cls.upscale_methods),),
                "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    def upscale(self, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple[torch.Tensor]:
        width = round(image.shape[2] * scale_by)
        height = round(image.shape[1] * scale_by)
        return (_scale(image, upscale_method, width, height, "disabled"),)


class ImageScaleToTotalPixels(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    upscale_methods: ClassVar[list[str]] = IMAGE_UPSCALE_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (list(cls.upscale_methods),),
                "megapixels": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
                "resolution_steps": ("INT", {"default": 1, "min": 1, "max": 256, "advanced": True}),
            }
        }

    def upscale(
        self, image: torch.Tensor, upscale_method: str, megapixels: float, resolution_steps: int = 1
    ) -> tuple[torch.Tensor]:
        total = megapixels * 1024 * 1024
        src_h, src_w = image.shape[1], image.shape[2]
        scale_by = math.sqrt(total / (src_w * src_h))
        width = round(src_w * scale_by / resolution_steps) * resolution_steps
        height = round(src_h * scale_by / resolution_steps) * resolution_steps
        return (_scale(image, upscale_method, int(width), int(height), "disabled"),)


class ImageInvert(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "image/color"
    ESSENTIALS_CATEGORY: ClassVar[str] = "Image Tools"
    SEARCH_ALIASES: ClassVar[list[str]] = ["reverse colors"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"image": ("IMAGE",)}}

    def invert(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - image,)


def gaussian_kernel(kernel_size: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """ComfyUI's 2-D blur kernel: a Gaussian of the distance on a [-1,1]² grid (not in pixels), normalised."""
    axis = torch.linspace(-1, 1, kernel_size, device=device)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    distance = torch.sqrt(gx * gx + gy * gy)
    weights = torch.exp(-(distance * distance) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _filter(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-channel 2-D convolution of [B,H,W,C] with reflected borders, as ComfyUI's blur/sharpen do it."""
    channels = image.shape[-1]
    weights = kernel.repeat(channels, 1, 1).unsqueeze(1)
    planar = F.pad(image.permute(0, 3, 1, 2), (radius, radius, radius, radius), "reflect")
    size = kernel.shape[-1]
    filtered = F.conv2d(planar, weights, padding=size // 2, groups=channels)[:, :, radius:-radius, radius:-radius]
    return filtered.permute(0, 2, 3, 1)


class ImageBlur(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blur"
    CATEGORY = "image/filters"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
            }
        }

    def blur(self, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple[torch.Tensor]:
        if blur_radius == 0:
            return (image,)
        kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, device=image.device).to(image.dtype)
        return (_filter(image, kernel, blur_radius),)


class ImageSharpen(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "sharpen"
    CATEGORY = "image/filters"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "sharpen_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1, "advanced": True}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01, "advanced": True}),
                "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01, "advanced": True}),
            }
        }

    def sharpen(self, image: torch.Tensor, sharpen_radius: int, sigma: float, alpha: float) -> tuple[torch.Tensor]:
        if sharpen_radius == 0:
            return (image,)
        size = sharpen_radius * 2 + 1
        # A negative Gaussian whose centre tap is raised so the kernel sums to one (unsharp mask).
        kernel = gaussian_kernel(size, sigma, device=image.device).to(image.dtype) * -(alpha * 10)
        kernel = kernel.to(dtype=image.dtype)
        center = size // 2
        kernel[center, center] = kernel[center, center] - kernel.sum() + 1.0
        return (torch.clamp(_filter(image, kernel, sharpen_radius), 0, 1),)


def _soft_light_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def apply_blend_mode(img1: torch.Tensor, img2: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend of image2 over image1 before it is mixed back by blend_factor (ComfyUI's Blend.blend_mode)."""
    if mode == "normal":
        return img2
    if mode == "multiply":
        return img1 * img2
    if mode == "screen":
        return 1 - (1 - img1) * (1 - img2)
    if mode == "overlay":
        return torch.where(img1 <= 0.5, 2 * img1 * img2, 1 - 2 * (1 - img1) * (1 - img2))
    if mode == "soft_light":
        return torch.where(
            img2 <= 0.5, img1 - (1 - 2 * img2) * img1 * (1 - img1), img1 + (2 * img2 - 1) * (_soft_light_g(img1) - img1)
        )
    if mode == "difference":
        return img1 - img2
    raise ValueError(f"Unsupported blend mode: {mode}")


class ImageBlend(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blend_images"
    CATEGORY = "image/filters"
    ESSENTIALS_CATEGORY: ClassVar[str] = "Image Tools"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image1": ("IMAGE",),
                "image2": ("IMAGE",),
                "blend_factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
                "blend_mode": (list(BLEND_MODES),),
            }
        }

    def blend_images(
        self, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float, blend_mode: str
    ) -> tuple[torch.Tensor]:
        image1, image2 = image_alpha_fix(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:  # image2 is fitted to image1 (bicubic, center crop)
            image2 = common_upscale(image2.permute(0, 3, 1, 2), image1.shape[2], image1.shape[1], "bicubic", "center")
            image2 = image2.permute(0, 2, 3, 1)
        blended = apply_blend_mode(image1, image2, blend_mode)
        blended = image1 * (1 - blend_factor) + blended * blend_factor
        return (torch.clamp(blended, 0, 1),)


class ImageCrop(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "crop"
    CATEGORY = "image/transform"
    DEPRECATED: ClassVar[bool] = True
    ESSENTIALS_CATEGORY: ClassVar[str] = "Image Tools"
    SEARCH_ALIASES: ClassVar[list[str]] = ["trim"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    def crop(self, image: torch.Tensor, width: int, height: int, x: int, y: int) -> tuple[torch.Tensor]:
        # The origin is clamped inside the image; the size is not (the slice just ends at the border).
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y : y + height, x : x + width, :],)


def outpaint_feather(
    height: int, width: int, top: int, bottom: int, left: int, right: int, feathering: int
) -> torch.Tensor:
    """The mask over the original image area: (1 - d/feathering)² near each padded edge, d the distance to it."""
    out = torch.zeros((height, width), dtype=torch.float32)
    if not (feathering > 0 and feathering * 2 < height and feathering * 2 < width):
        return out
    rows = torch.arange(height, dtype=torch.int64).unsqueeze(1).expand(height, width)
    cols = torch.arange(width, dtype=torch.int64).unsqueeze(0).expand(height, width)
    # An edge that is not padded counts as far away (the full size), so it never feathers.
    d_top = rows if top != 0 else torch.full_like(rows, height)
    d_bottom = height - rows if bottom != 0 else torch.full_like(rows, height)
    d_left = cols if left != 0 else torch.full_like(cols, width)
    d_right = width - cols if right != 0 else torch.full_like(cols, width)
    nearest = torch.minimum(torch.minimum(d_top, d_bottom), torch.minimum(d_left, d_right))
    ramp = (feathering - nearest).to(torch.float64) / feathering  # Python-float arithmetic, like ComfyUI's loop
    values = (ramp * ramp).to(torch.float32)
    return torch.where(nearest < feathering, values, out)


class ImagePadForOutpaint(BuiltinNode):
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "expand_image"
    CATEGORY = "image/transform"
    SEARCH_ALIASES: ClassVar[list[str]] = ["extend canvas", "expand image"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        side = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "image": ("IMAGE",),
                "left": ("INT", dict(side)),
                "top": ("INT", dict(side)),
                "right": ("INT", dict(side)),
                "bottom": ("INT", dict(side)),
                "feathering": ("INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1, "advanced": True}),
            }
        }

    def expand_image(
        self, image: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, height, width, channels = image.size()
        canvas = torch.ones((batch, height + top + bottom, width + left + right, channels), dtype=torch.float32) * 0.5
        canvas[:, top : top + height, left : left + width, :] = image
        mask = torch.ones((height + top + bottom, width + left + right), dtype=torch.float32)
        mask[top : top + height, left : left + width] = outpaint_feather(
            height, width, top, bottom, left, right, feathering
        )
        return (canvas, mask.unsqueeze(0))


class ImageBatch(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"
    CATEGORY = "image/batch"
    DEPRECATED: ClassVar[bool] = True
    SEARCH_ALIASES: ClassVar[list[str]] = ["combine images", "merge images", "stack images"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    def batch(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor]:
        if image1.shape[-1] != image2.shape[-1]:  # RGB next to RGBA: the RGB one gets an opaque alpha
            if image1.shape[-1] > image2.shape[-1]:
                image2 = F.pad(image2, (0, 1), mode="constant", value=1.0)
            else:
                image1 = F.pad(image1, (0, 1), mode="constant", value=1.0)
        if image1.shape[1:] != image2.shape[1:]:  # image2 is fitted to image1 (bilinear, center crop)
            image2 = common_upscale(
                image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear", "center"
            ).movedim(1, -1)
        return (torch.cat((image1, image2), dim=0),)


class RepeatImageBatch(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "repeat"
    CATEGORY = "image/batch"
    SEARCH_ALIASES: ClassVar[list[str]] = ["duplicate image", "clone image"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"image": ("IMAGE",), "amount": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def repeat(self, image: torch.Tensor, amount: int) -> tuple[torch.Tensor]:
        return (image.repeat((amount, 1, 1, 1)),)


class ImageCompositeMasked(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "composite"
    CATEGORY = "image/compositing"
    SEARCH_ALIASES: ClassVar[list[str]] = ["paste image", "overlay", "layer"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "destination": ("IMAGE",),
                "source": ("IMAGE",),
                "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "resize_source": ("BOOLEAN", {"default": False}),
            },
            "optional": {"mask": ("MASK",)},
        }

    def composite(
        self,
        destination: torch.Tensor,
        source: torch.Tensor,
        x: int,
        y: int,
        resize_source: bool,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor]:
        destination, source = image_alpha_fix(destination, source)
        planar = destination.clone().movedim(-1, 1)
        out = composite(planar, source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


NODE_CLASS_MAPPINGS: dict[str, type[Any]] = {
    "EmptyImage": EmptyImage,
    "ImageScale": ImageScale,
    "ImageScaleBy": ImageScaleBy,
    "ImageScaleToTotalPixels": ImageScaleToTotalPixels,
    "ImageInvert": ImageInvert,
    "ImageBlur": ImageBlur,
    "ImageSharpen": ImageSharpen,
    "ImageBlend": ImageBlend,
    "ImageCrop": ImageCrop,
    "ImagePadForOutpaint": ImagePadForOutpaint,
    "ImageBatch": ImageBatch,
    "RepeatImageBatch": RepeatImageBatch,
    "ImageCompositeMasked": ImageCompositeMasked,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "EmptyImage": "Empty Image",
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "ImageScaleToTotalPixels": "Scale Image to Total Pixels",
    "ImageInvert": "Invert Image Colors",
    "ImageBlur": "Blur Image",
    "ImageSharpen": "Sharpen Image",
    "ImageBlend": "Blend Images",
    "ImageCrop": "Crop Image (DEPRECATED)",
    "ImagePadForOutpaint": "Pad Image for Outpainting",
    "ImageBatch": "Batch Images (DEPRECATED)",
    "RepeatImageBatch": "Repeat Image Batch",
    "ImageCompositeMasked": "Image Composite Masked",
}
