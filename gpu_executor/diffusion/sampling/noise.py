"""The initial noise of a KSampler and the inpainting noise mask, as ComfyUI prepares them (`comfy/sample.py`,
`comfy/sampler_helpers.py`, `comfy/utils.py`).

The noise is drawn on the CPU from a generator seeded with the node's seed, so a seed gives the same latent noise
on any machine. ComfyUI seeds the process-global generator (`torch.manual_seed`); a private `torch.Generator`
seeded the same way yields the same numbers without touching global state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy
import torch
from torch import Tensor


def prepare_noise(latent_image: Tensor, seed: int, batch_inds: Sequence[int] | Tensor | None = None) -> Tensor:
    """Gaussian noise shaped like `latent_image` for `seed` (ComfyUI's `comfy.sample.prepare_noise`).

    With `batch_inds` (a LATENT's "batch_index", set by e.g. "Latent From Batch"), noise is drawn one sample at a
    time for indices 0..max(batch_inds) and the samples at those indices are returned, so that picking item k of a
    batch reproduces the noise item k had in the whole batch.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    if batch_inds is None:
        return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout,
                           generator=generator, device="cpu")
    inds = numpy.asarray(batch_inds.tolist() if isinstance(batch_inds, Tensor) else list(batch_inds))
    unique_inds, inverse = numpy.unique(inds, return_inverse=True)
    noises: list[Tensor] = []
    for i in range(int(unique_inds[-1]) + 1):
        noise = torch.randn([1, *latent_image.size()[1:]], dtype=latent_image.dtype, layout=latent_image.layout,
                            generator=generator, device="cpu")
        if i in unique_inds:
            noises.append(noise)
    return torch.cat([noises[int(i)] for i in inverse.reshape(-1)], dim=0)


def repeat_to_batch_size(tensor: Tensor, batch_size: int, dim: int = 0) -> Tensor:
    """Truncate or tile `tensor` along `dim` to `batch_size` (ComfyUI's `comfy.utils.repeat_to_batch_size`)."""
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = dim * [1] + [math.ceil(batch_size / tensor.shape[dim])] + [1] * (len(tensor.shape) - 1 - dim)
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


def reshape_mask(input_mask: Tensor, output_shape: Sequence[int]) -> Tensor:
    """Resize a mask ([H, W], [B, H, W] or [B, 1, H, W]) to a latent's shape [B, C, h, w] (bilinear, no rounding),
    repeated over channels and batch (ComfyUI's `comfy.utils.reshape_mask`, 2-D latents)."""
    dims = len(output_shape) - 2
    if dims != 2:
        raise ValueError(f"only image latents (4-D) are supported, got a shape of {len(output_shape)} dims")
    mask = input_mask.reshape((-1, 1, input_mask.shape[-2], input_mask.shape[-1]))
    mask = torch.nn.functional.interpolate(mask, size=tuple(output_shape[2:]), mode="bilinear")
    if mask.shape[1] < output_shape[1]:
        mask = mask.repeat((1, output_shape[1]) + (1,) * dims)[:, :output_shape[1]]
    return repeat_to_batch_size(mask, output_shape[0])


def prepare_mask(noise_mask: Tensor, shape: Sequence[int], device: torch.device | str) -> Tensor:
    """The denoise mask of a LATENT's "noise_mask" for a latent of `shape` (1 = regenerate, 0 = keep), as float32
    on `device` (ComfyUI's `comfy.sampler_helpers.prepare_mask` followed by CFGGuider's `.float()`)."""
    return reshape_mask(noise_mask, shape).to(device).float()
