"""VAE encode/decode with ComfyUI's conventions, on diffusers' ``AutoencoderKL``.

* Images are ``[B, H, W, C]`` floats in 0..1 (ComfyUI's IMAGE); latents are ``[B, 4, H/8, W/8]`` in the VAE's own
  space (ComfyUI's LATENT ``samples``): *not* multiplied by the model's scale factor.
* `encode` crops H and W to multiples of 8 around the centre (``VAE.vae_encode_crop_pixels``), keeps the first three
  channels, maps 0..1 → -1..1 and returns the mean of the latent distribution (ComfyUI's regulariser uses the mode).
* `decode` maps the decoder output -1..1 → 0..1 with clamping.
* The model's latent format is applied only around the diffusion model: `process_in` (latent → model space,
  ``(x - shift) * scale``) and `process_out` (model space → latent), like ComfyUI's ``latent_format``.
* `decode_tiled` / `encode_tiled` follow VAEDecodeTiled / VAEEncodeTiled: three tilings (square, wide, tall)
  averaged, each blended with linear feathering over the overlap.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

SCALE = 8


@dataclass(frozen=True)
class LatentFormat:
    scale_factor: float
    shift_factor: float = 0.0
    latent_channels: int = 4


SD15_LATENT = LatentFormat(0.18215)
SDXL_LATENT = LatentFormat(0.13025)
SD3_LATENT = LatentFormat(1.5305, 0.0609, 16)
FLUX_LATENT = LatentFormat(0.3611, 0.1159, 16)


def process_in(latent: torch.Tensor, scale_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
    """VAE latent → diffusion-model space (ComfyUI ``latent_format.process_in``)."""
    return (latent - shift_factor) * scale_factor


def process_out(latent: torch.Tensor, scale_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
    """Diffusion-model space → VAE latent (ComfyUI ``latent_format.process_out``)."""
    return latent / scale_factor + shift_factor


def _param(vae: Any) -> torch.Tensor:
    p: torch.Tensor = next(vae.parameters())
    return p


def crop_to_multiple(pixels: torch.Tensor, multiple: int = SCALE) -> torch.Tensor:
    """Centre-crop ``[B, H, W, C]`` so H and W are multiples of ``multiple`` (ComfyUI's encode crop)."""
    for dim in (1, 2):
        size = pixels.shape[dim]
        keep = (size // multiple) * multiple
        if keep != size:
            pixels = pixels.narrow(dim, (size % multiple) // 2, keep)
    return pixels


def _encode_nchw(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    model: Any = vae  # diffusers classes carry no type information mypy can use
    p = _param(model)
    x = (x * 2.0 - 1.0).to(device=p.device, dtype=p.dtype)
    mean: torch.Tensor = model.encode(x).latent_dist.mode()
    return mean.float()


def _decode_nchw(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Raw decoder output (-1..1 nominal), float32."""
    model: Any = vae
    p = _param(model)
    out: torch.Tensor = model.decode(z.to(device=p.device, dtype=p.dtype)).sample
    return out.float()


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


@torch.inference_mode()
def encode(vae: AutoencoderKL, pixels: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """``[B, H, W, C]`` image in 0..1 → ``[B, 4, H//8, W//8]`` latent (float32, on the image's device)."""
    if pixels.dim() != 4:
        raise ValueError(f"expected pixels [B, H, W, C], got {tuple(pixels.shape)}")
    pixels = crop_to_multiple(pixels[..., :3])
    x = pixels.movedim(-1, 1)
    step = batch_size or x.shape[0]
    parts = [_encode_nchw(vae, x[i : i + step]).to(pixels.device) for i in range(0, x.shape[0], step)]
    return torch.cat(parts, 0)


@torch.inference_mode()
def decode(vae: AutoencoderKL, latent: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """``[B, 4, h, w]`` latent → ``[B, 8h, 8w, 3]`` image in 0..1 (float32, on the latent's device)."""
    if latent.dim() != 4:
        raise ValueError(f"expected latent [B, C, h, w], got {tuple(latent.shape)}")
    step = batch_size or latent.shape[0]
    parts = [_to_unit(_decode_nchw(vae, latent[i : i + step])).to(latent.device)
             for i in range(0, latent.shape[0], step)]  # fmt: skip
    return torch.cat(parts, 0).movedim(1, -1)


def tiled_scale(
    samples: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    tile: Sequence[int],
    overlap: int,
    upscale: float,
    out_channels: int,
) -> torch.Tensor:
    """Apply ``function`` (which scales spatial size by ``upscale``) over overlapping tiles of ``samples``
    ``[B, C, H, W]`` and blend the results with masks that ramp linearly over ``overlap * upscale`` pixels at
    every tile edge (ComfyUI's ``tiled_scale_multidim`` for two dimensions). ``tile`` is ``(tile_h, tile_w)``."""
    dims = 2
    out_shape = [samples.shape[0], out_channels] + [round(s * upscale) for s in samples.shape[2:]]
    output = torch.empty(out_shape, device=samples.device, dtype=torch.float32)
    for b in range(samples.shape[0]):
        s = samples[b : b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(dims)):
            output[b : b + 1] = function(s).to(output.device, torch.float32)
            continue
        out = torch.zeros([1, *out_shape[1:]], device=samples.device, dtype=torch.float32)
        out_div = torch.zeros_like(out)
        positions = [
            range(0, s.shape[d + 2] - overlap, tile[d] - overlap) if s.shape[d + 2] > tile[d] else [0]
            for d in range(dims)
        ]
        for it in itertools.product(*positions):
            s_in = s
            starts: list[int] = []
            for d in range(dims):
                pos = max(0, min(s.shape[d + 2] - overlap, it[d]))
                length = min(tile[d], s.shape[d + 2] - pos)
                s_in = s_in.narrow(d + 2, pos, length)
                starts.append(round(pos * upscale))
            ps = function(s_in).to(out.device, torch.float32)
            mask = torch.ones_like(ps)
            feather = round(overlap * upscale)
            for d in range(2, dims + 2):
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            o, o_d = out, out_div
            for d in range(dims):
                o = o.narrow(d + 2, starts[d], mask.shape[d + 2])
                o_d = o_d.narrow(d + 2, starts[d], mask.shape[d + 2])
            o.add_(ps * mask)
            o_d.add_(mask)
        output[b : b + 1] = out / out_div
    return output


def _tiled_passes(tile_x: int, tile_y: int) -> tuple[tuple[int, int], ...]:
    """ComfyUI's three tilings: (tile_y, tile_x) as (h, w) for wide, tall and square tiles."""
    return ((tile_y * 2, tile_x // 2), (tile_y // 2, tile_x * 2), (tile_y, tile_x))


@torch.inference_mode()
def decode_tiled(vae: AutoencoderKL, latent: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
    """VAEDecodeTiled: ``tile_size``/``overlap`` in pixels (overlap is reduced to tile_size//4 when larger than
    that); tiles of ``tile_size//8`` latent pixels, three tilings averaged. Returns ``[B, H, W, 3]`` in 0..1."""
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    tile = tile_size // SCALE
    ov = overlap // SCALE
    passes = [tiled_scale(latent, lambda z: _decode_nchw(vae, z), t, ov, SCALE, 3) for t in _tiled_passes(tile, tile)]
    return _to_unit((passes[0] + passes[1] + passes[2]) / 3.0).movedim(1, -1)


@torch.inference_mode()
def encode_tiled(vae: AutoencoderKL, pixels: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
    """VAEEncodeTiled: pixel tiles of ``tile_size`` with ``overlap`` pixels, three tilings averaged."""
    pixels = crop_to_multiple(pixels[..., :3])
    x = pixels.movedim(-1, 1)
    model: Any = vae
    channels = int(model.config.latent_channels)
    tiles = ((tile_size, tile_size), (tile_size // 2, tile_size * 2), (tile_size * 2, tile_size // 2))
    passes = [tiled_scale(x, lambda t: _encode_nchw(vae, t), tile, overlap, 1 / SCALE, channels) for tile in tiles]
    return (passes[0] + passes[1] + passes[2]) / 3.0
