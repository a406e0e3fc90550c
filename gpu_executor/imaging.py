"""ComfyUI's resampling (comfy.utils.common_upscale): torch interpolation, Pillow Lanczos, and bislerp.

`common_upscale` takes channels-first samples ([B,C,H,W], or more dims folded into the batch) and a method:
- "nearest-exact", "bilinear", "area", "bicubic": `torch.nn.functional.interpolate(s, size=(h, w), mode=method)`
  with torch's defaults (align_corners unset, no antialias), exactly as ComfyUI calls it;
- "lanczos": each image goes through 8-bit Pillow (clip(255·x) truncated to uint8, `Image.resize(LANCZOS)`, /255),
  so the result is quantised to 1/255 steps like ComfyUI's;
- "bislerp": bilinear interpolation that slerps between neighbouring channel vectors (latents).
crop="center" first trims the source to the target aspect ratio, symmetrically.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from PIL import Image

from gpu_executor.engine.runtime import check_interrupted

IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
LATENT_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize [B,C,H,W] through Pillow's 8-bit Lanczos filter, one image at a time."""
    resized: list[torch.Tensor] = []
    for frame in samples:
        check_interrupted()
        pixels = frame.movedim(0, -1).cpu().numpy()
        single_channel = pixels.shape[-1] == 1
        if single_channel:  # Pillow wants a 2-D array for one channel
            pixels = pixels[..., 0]
        as_bytes = np.clip(255.0 * pixels, 0, 255).astype(np.uint8)
        out = Image.fromarray(as_bytes).resize((width, height), resample=Image.Resampling.LANCZOS)
        values = torch.from_numpy(np.array(out).astype(np.float32) / 255.0)
        resized.append(values.unsqueeze(0) if single_channel else values.movedim(-1, 0))
    return torch.stack(resized).to(samples.device, samples.dtype)


def _slerp(start: torch.Tensor, end: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows of `start`/`end` ([N,C]) by `ratio` ([N,1]), magnitudes lerped."""
    channels = start.shape[-1]
    start_norm = torch.norm(start, dim=-1, keepdim=True)
    end_norm = torch.norm(end, dim=-1, keepdim=True)
    start_dir = start / start_norm
    end_dir = end / end_norm
    start_dir[start_norm.expand(-1, channels) == 0.0] = 0.0
    end_dir[end_norm.expand(-1, channels) == 0.0] = 0.0

    cos_angle = (start_dir * end_dir).sum(1)
    angle = torch.acos(cos_angle)
    sin_angle = torch.sin(angle)
    r = ratio.squeeze(1)
    result: torch.Tensor = (torch.sin((1.0 - r) * angle) / sin_angle).unsqueeze(1) * start_dir + (
        torch.sin(r * angle) / sin_angle
    ).unsqueeze(1) * end_dir
    result *= (start_norm * (1.0 - ratio) + end_norm * ratio).expand(-1, channels)

    # Nearly parallel: keep the start; nearly opposite: plain lerp.
    parallel = cos_angle > 1 - 1e-5
    result[parallel] = start[parallel]
    opposite = cos_angle < 1e-5 - 1
    result[opposite] = (start * (1.0 - ratio) + end * ratio)[opposite]
    return result


def _bilinear_taps(length_old: int, length_new: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """For each output position: the blend ratio and the two source indices that bilinear resizing would mix."""
    positions = torch.arange(length_old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1))
    positions = F.interpolate(positions, size=(1, length_new), mode="bilinear")
    ratios = positions - positions.floor()
    first = positions.to(torch.int64)

    following = torch.arange(length_old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1)) + 1
    following[:, :, :, -1] -= 1
    second = F.interpolate(following, size=(1, length_new), mode="bilinear").to(torch.int64)
    return ratios, first, second


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize [B,C,H,W] separably (width, then height), slerping channel vectors between the two taps."""
    orig_dtype = samples.dtype
    samples = samples.float()
    n, c, h, w = samples.shape

    ratios, first, second = _bilinear_taps(w, width, samples.device)
    first = first.expand((n, c, h, -1))
    second = second.expand((n, c, h, -1))
    ratios = ratios.expand((n, 1, h, -1))
    left = samples.gather(-1, first).movedim(1, -1).reshape((-1, c))
    right = samples.gather(-1, second).movedim(1, -1).reshape((-1, c))
    mixed = _slerp(left, right, ratios.movedim(1, -1).reshape((-1, 1)))
    rows = mixed.reshape(n, h, width, c).movedim(-1, 1)

    ratios, first, second = _bilinear_taps(h, height, samples.device)
    first = first.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    second = second.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    ratios = ratios.reshape((1, 1, -1, 1)).expand((n, 1, -1, width))
    top = rows.gather(-2, first).movedim(1, -1).reshape((-1, c))
    bottom = rows.gather(-2, second).movedim(1, -1).reshape((-1, c))
    mixed = _slerp(top, bottom, ratios.movedim(1, -1).reshape((-1, 1)))
    return mixed.reshape(n, height, width, c).movedim(-1, 1).to(orig_dtype)


def center_crop_box(old_width: int, old_height: int, width: int, height: int) -> tuple[int, int]:
    """The x/y margins trimmed from each side so that the source has the target's aspect ratio."""
    old_aspect = old_width / old_height
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    return x, y


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize channels-first samples to width×height with ComfyUI's methods and optional center crop."""
    orig_shape = tuple(samples.shape)
    if len(orig_shape) > 4:  # e.g. video latents [B,C,T,H,W]: fold the extra dims into the batch
        samples = samples.reshape(orig_shape[0], orig_shape[1], -1, orig_shape[-2], orig_shape[-1])
        samples = samples.movedim(2, 1).reshape(-1, orig_shape[1], orig_shape[-2], orig_shape[-1])

    if crop == "center":
        old_width, old_height = samples.shape[-1], samples.shape[-2]
        x, y = center_crop_box(old_width, old_height, width, height)
        source = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    else:
        source = samples

    if upscale_method == "bislerp":
        out = bislerp(source, width, height)
    elif upscale_method == "lanczos":
        out = lanczos(source, width, height)
    else:
        out = F.interpolate(source, size=(height, width), mode=upscale_method)

    if len(orig_shape) == 4:
        return out
    out = out.reshape((orig_shape[0], -1, orig_shape[1], height, width))
    return out.movedim(2, 1).reshape((*orig_shape[:-2], height, width))
