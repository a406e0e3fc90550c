"""File nodes: LoadImage / LoadImageMask read the execution's input files, SaveImage / PreviewImage write PNGs.

Inputs are the execution's files (`runtime.current().inputs`, name → path); outputs go to the execution's output
directory (SaveImage) or temp directory (PreviewImage), named like ComfyUI's `folder_paths.get_save_image_path`:
`{prefix}_{counter:05}_.png`, the counter continuing after the files already there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from gpu_executor.engine import runtime
from gpu_executor.engine.runtime import available_input_files, check_interrupted
from gpu_executor.nodes._common import BuiltinNode, InputTypes

_T = TypeVar("_T")
_R = TypeVar("_R")

# ComfyUI draws PreviewImage's random suffix from this alphabet (sic: "p" twice, no "w").
_PREVIEW_ALPHABET = "abcdefghijklmnopqrstupvxyz"
_OUTSIDE_OUTPUT = "**** ERROR: Saving image outside the output folder is not allowed."


# --- naming ---------------------------------------------------------------------------------------------------


def _expand_prefix_variables(prefix: str, image_width: int, image_height: int) -> str:
    now = time.localtime()
    for name, value in (
        ("%width%", str(image_width)),
        ("%height%", str(image_height)),
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ):
        prefix = prefix.replace(name, value)
    return prefix


def _existing_counter(entry: str, prefix_len: int, filename: str) -> int | None:
    """The counter of a file `{filename}_{counter}_…` already in the folder, or None for any other file."""
    head = entry[: prefix_len + 1]
    if not head or os.path.normcase(head[:-1]) != os.path.normcase(filename) or head[-1] != "_":
        return None
    try:
        return int(entry[prefix_len + 1 :].split("_")[0])
    except ValueError:
        return 0


def get_save_image_path(
    filename_prefix: str, output_dir: str | os.PathLike[str], image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """ComfyUI's folder_paths.get_save_image_path: (folder, file name stem, next counter, subfolder, prefix).

    The prefix may hold a subfolder ("portraits/face") and the variables %width%, %height%, %year%, %month%,
    %day%, %hour%, %minute%, %second%. A prefix that leads outside `output_dir` ("../x", "/abs/x") is refused.
    """
    output_dir = os.path.abspath(output_dir)
    if "%" in filename_prefix:
        filename_prefix = _expand_prefix_variables(filename_prefix, image_width, image_height)

    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)

    resolved = os.path.abspath(full_output_folder)
    common = os.path.commonpath((output_dir, resolved))
    if common != output_dir:
        raise Exception(  # ComfyUI raises a bare Exception with this text
            f"{_OUTSIDE_OUTPUT}\n full_output_folder: {resolved}\n         output_dir: {output_dir}"
            f"\n         commonpath: {common}"
        )

    try:
        entries = os.listdir(full_output_folder)
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        entries = []
    # ComfyUI measures the stem on the prefix as given (before normalisation).
    prefix_len = len(os.path.basename(filename_prefix))
    counters = [c for c in (_existing_counter(e, prefix_len, filename) for e in entries) if c is not None]
    counter = max(counters) + 1 if counters else 1
    return full_output_folder, filename, counter, subfolder, filename_prefix


# --- saving ---------------------------------------------------------------------------------------------------


def _to_pil(image: torch.Tensor) -> Image.Image:
    """[H,W,C] in 0..1 → 8-bit Pillow image: 255·x clipped and truncated, as ComfyUI's SaveImage does."""
    pixels = 255.0 * image.cpu().numpy()
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


class SaveImage(BuiltinNode):
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES: ClassVar[tuple[str, ...]] = ("images",)
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."
    ESSENTIALS_CATEGORY: ClassVar[str] = "Basics"
    SEARCH_ALIASES: ClassVar[list[str]] = [
        "save", "save image", "export image", "output image", "write image", "download",
    ]  # fmt: skip

    def __init__(self) -> None:
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    def _target_dir(self) -> Path:
        return runtime.current().output_dir

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save. This may include formatting information such as "
                        "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
                    },
                ),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(
        self,
        images: torch.Tensor,
        filename_prefix: str = "ComfyUI",
        prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        current = runtime.current()
        if prompt is None:
            prompt = current.prompt
        if extra_pnginfo is None:
            extra_pnginfo = current.extra_pnginfo

        filename_prefix += self.prefix_append
        folder, filename, counter, subfolder, filename_prefix = get_save_image_path(
            filename_prefix, self._target_dir(), images[0].shape[1], images[0].shape[0]
        )
        results: list[dict[str, str]] = []
        for batch_number, image in enumerate(images):
            check_interrupted()
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for key in extra_pnginfo:
                    metadata.add_text(key, json.dumps(extra_pnginfo[key]))
            file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            _to_pil(image).save(os.path.join(folder, file), pnginfo=metadata, compress_level=self.compress_level)
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}, "result": (images,)}


class PreviewImage(SaveImage):
    DESCRIPTION = "Preview the images without saving them to the ComfyUI output directory."
    SEARCH_ALIASES: ClassVar[list[str]] = [
        "preview", "preview image", "show image", "view image", "display image", "image viewer",
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(secrets.choice(_PREVIEW_ALPHABET) for _ in range(5))
        self.compress_level = 1

    def _target_dir(self) -> Path:
        return runtime.current().temp_dir

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


# --- loading --------------------------------------------------------------------------------------------------


def _pillow(fn: Callable[[_T], _R], arg: _T) -> _R:
    """Call a Pillow function, retrying once with truncated images allowed (ComfyUI's node_helpers.pillow)."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _strip_annotation(name: str) -> str:
    return name[: -len(" [input]")] if name.endswith(" [input]") else name


def _known_inputs() -> set[str]:
    names = set(available_input_files())
    with contextlib.suppress(RuntimeError):  # validation may run outside a node
        names.update(runtime.current().inputs)
    return names


def input_path(name: str) -> Path:
    """The path of the execution's input file `name` (LoadImage's choice)."""
    inputs = runtime.current().inputs
    key = _strip_annotation(name)
    if key not in inputs:
        raise FileNotFoundError(f"Invalid image file: {name}")
    return inputs[key]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _scale_32bit(value: float) -> float:
    return value * (1 / 255)


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every frame of the same size as the first into IMAGE [N,H,W,3] and MASK [N,h,w] (1 - alpha).

    EXIF orientation is applied; 32-bit integer ("I") images are divided by 255; a frame without alpha gets
    a 64×64 zero mask; MPO files (a JPEG plus its previews) give their first frame only.
    """
    img = _pillow(Image.open, path)
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    size: tuple[int, int] | None = None
    try:
        for raw in ImageSequence.Iterator(img):
            check_interrupted()
            frame = _pillow(ImageOps.exif_transpose, raw)
            if frame.mode == "I":
                frame = frame.point(_scale_32bit)
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            masks.append(mask.unsqueeze(0))
            if img.format == "MPO":
                break
    finally:
        img.close()
    return torch.cat(images, dim=0), torch.cat(masks, dim=0)


class LoadImage(BuiltinNode):
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"
    ESSENTIALS_CATEGORY: ClassVar[str] = "Basics"
    SEARCH_ALIASES: ClassVar[list[str]] = [
        "load image", "open image", "import image", "image input", "upload image", "read image", "image loader",
    ]  # fmt: skip

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"image": (sorted(available_input_files()), {"image_upload": True})}}

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image_file(input_path(image))

    @classmethod
    def IS_CHANGED(cls, image: str, **_: Any) -> str:
        return file_sha256(input_path(image))

    @classmethod
    def VALIDATE_INPUTS(cls, image: str, **_: Any) -> bool | str:
        if _strip_annotation(image) not in _known_inputs():
            return f"Invalid image file: {image}"
        return True


class LoadImageMask(LoadImage):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image_mask"
    CATEGORY = "image"
    ESSENTIALS_CATEGORY: ClassVar[str] = "Image Tools"
    SEARCH_ALIASES: ClassVar[list[str]] = ["import mask", "alpha mask", "channel mask"]

    _color_channels: ClassVar[list[str]] = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        required = dict(super().INPUT_TYPES()["required"])
        required["channel"] = (list(cls._color_channels),)
        return {"required": required}

    @classmethod
    def IS_CHANGED(cls, image: str, channel: str | None = None, **_: Any) -> str:
        return file_sha256(input_path(image))

    def load_image_mask(self, image: str, channel: str) -> tuple[torch.Tensor]:
        pixels, mask = self.load_image(image)
        letter = channel[0].upper()
        if letter == "A":
            return (mask,)
        index = {"R": 0, "G": 1, "B": 2}.get(letter, 0)
        if index < pixels.shape[-1]:
            return (pixels[..., index].clone(),)
        return (torch.zeros(pixels.shape[:-1], dtype=pixels.dtype, device=pixels.device),)


NODE_CLASS_MAPPINGS: dict[str, type[Any]] = {
    "LoadImage": LoadImage,
    "LoadImageMask": LoadImageMask,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "LoadImage": "Load Image",
    "LoadImageMask": "Load Image (as Mask)",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
}
