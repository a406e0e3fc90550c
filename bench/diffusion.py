"""Stable Diffusion on the built-in engine: seconds per sampler step on the tiny checkpoint at 64 and 256 px (the
CPU unless CUDA is present), checkpoint load time from disk, and, on a GPU, it/s of a full-size SD1.5-architecture
UNet at 512 px over 20 steps.

    .venv/bin/python -m bench.diffusion

Every figure is measured in this run; the GPU figure is printed as "not measured" without CUDA.
"""

from __future__ import annotations

import statistics
import time

import torch

from gpu_executor.diffusion.devices import choose_placement
from gpu_executor.diffusion.models.loader import load_checkpoint
from gpu_executor.diffusion.models.testing import make_tiny_sd1_checkpoint, sd1_unet_config
from gpu_executor.diffusion.sampling import ModelSamplingDiscrete, sample


def _denoiser(unet: object, device: torch.device, dtype: torch.dtype) -> object:
    from gpu_executor.diffusion.denoiser import UNetDenoiser

    return UNetDenoiser(unet, device, dtype)


def seconds_per_step(unet: object, device: torch.device, dtype: torch.dtype, size: int, steps: int) -> float:
    latent = torch.zeros((1, 4, size // 8, size // 8))
    context = torch.randn((1, 77, 768), generator=torch.Generator().manual_seed(0))
    cond = [[context, {}]]
    started = time.perf_counter()
    sample(_denoiser(unet, device, dtype), ModelSamplingDiscrete(), None, latent, seed=0, steps=steps,  # type: ignore[arg-type]
           cfg=7.0, sampler_name="euler", scheduler="normal", positive=cond, negative=cond, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> None:
    placement = choose_placement()
    print(f"diffusion benchmark on {placement.device} ({placement.dtype})")
    path = make_tiny_sd1_checkpoint(seed=0)
    size_mb = path.stat().st_size / 1e6
    loads = []
    for _ in range(3):
        started = time.perf_counter()
        checkpoint = load_checkpoint(path, device=placement.device, dtype=placement.dtype)
        loads.append(time.perf_counter() - started)
    print(f"  tiny checkpoint load ({size_mb:.0f} MB, UNet+VAE+CLIP-L)   median {statistics.median(loads):.2f} s"
          f"   ({size_mb / statistics.median(loads):.0f} MB/s)")
    unet = checkpoint.unet
    seconds_per_step(unet, placement.device, placement.dtype, 64, 2)  # warm-up
    for size in (64, 256):
        per_step = seconds_per_step(unet, placement.device, placement.dtype, size, 6)
        print(f"  tiny UNet, {size:>3} px, euler, cfg 7 (2 UNet passes/step)   {per_step * 1000:8.1f} ms/step")

    if placement.device.type != "cuda":
        print("  full-size SD1.5 UNet at 512 px, 20 steps           not measured (no CUDA device here)")
        return
    from diffusers import UNet2DConditionModel

    from gpu_executor.diffusion.models.configs import unet_diffusers_config
    from gpu_executor.diffusion.models.loader import new_module

    full = new_module(UNet2DConditionModel, **unet_diffusers_config(sd1_unet_config(), "sd1"))
    full = full.to(placement.device, placement.dtype).eval()
    seconds_per_step(full, placement.device, placement.dtype, 512, 2)
    per_step = seconds_per_step(full, placement.device, placement.dtype, 512, 20)
    print(f"  full-size SD1.5 UNet at 512 px, 20 steps, cfg 7       {1 / per_step:8.2f} it/s")


if __name__ == "__main__":
    main()
