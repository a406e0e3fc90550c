"""ComfyUI's KSampler / KSamplerAdvanced: sigmas, noise, CFG and inpainting around a sampler (`comfy/samplers.py`
KSampler, CFGGuider, KSAMPLER, KSamplerX0Inpaint, sampling_function; `comfy/sample.py`; `nodes.common_ksampler`).

The UNet is reached through a `Denoiser`: `denoiser(x_in, timestep, conds) -> raw model output` (eps or v), where

* `x_in` is the model input `x / sqrt(sigma² + 1)` in float32 (the denoiser casts it to the model's dtype),
* `timestep` is the float32 training timestep of each row (ComfyUI's `model_sampling.timestep(sigma).float()`,
  integer valued for SD),
* `conds` lists the conditioning entries of the batch in order, one per chunk of `x_in.shape[0] // len(conds)`
  rows: ComfyUI's `[tensor, options]` entries of the positive/negative lists (see `conditioning` for what the
  options mean and which of them the denoiser must apply). With cfg != 1 a plain prompt pair arrives as one call
  `[negative_entry, positive_entry]`, the batch holding the negative rows first, as in ComfyUI.

The output is converted back to a denoised latent with the model sampling's prediction type (`.float()` first, as
ComfyUI does), and CFG combines the denoised latents: `uncond + (cond - uncond) * cfg`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from gpu_executor.diffusion.sampling.conditioning import (
    CanConcat,
    Cond,
    calc_cond_batch,
    default_can_concat,
    process_conds,
)
from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete, is_max_denoise
from gpu_executor.diffusion.sampling.noise import prepare_mask, prepare_noise
from gpu_executor.diffusion.sampling.samplers import DISCARD_PENULTIMATE_SIGMA_SAMPLERS, Callback, sampler_spec
from gpu_executor.diffusion.sampling.schedulers import SCHEDULER_NAMES, calculate_sigmas


class Denoiser(Protocol):
    def __call__(self, x_in: Tensor, timestep: Tensor, conds: list[Any]) -> Tensor: ...


@dataclass(frozen=True)
class LatentFormat:
    """How a model's latent space relates to the VAE's (ComfyUI's `comfy.latent_formats`): LATENT values are VAE
    latents; the sampler works on `(latent - shift) * scale` and converts back at the end."""

    scale_factor: float = 1.0
    shift_factor: float | None = None

    def process_in(self, latent: Tensor) -> Tensor:
        if self.shift_factor is None:
            return latent * self.scale_factor
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: Tensor) -> Tensor:
        if self.shift_factor is None:
            return latent / self.scale_factor
        return latent / self.scale_factor + self.shift_factor


SD15_LATENT_FORMAT = LatentFormat(scale_factor=0.18215)  # SD1.x and SD2.x
SDXL_LATENT_FORMAT = LatentFormat(scale_factor=0.13025)


def compute_sigmas(model_sampling: ModelSamplingDiscrete, steps: int, sampler_name: str, scheduler: str,
                   denoise: float | None = 1.0) -> Tensor:
    """KSampler's sigmas: `steps + 1` values ending in 0; for denoise < 1 the last `steps + 1` of a schedule of
    int(steps / denoise) steps; empty for denoise <= 0. dpm_2-like samplers compute one more sigma and drop the
    penultimate one."""
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULER_NAMES)}")

    def calculate(n: int) -> Tensor:
        discard_penultimate = sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = calculate_sigmas(model_sampling, scheduler, n + 1 if discard_penultimate else n)
        if discard_penultimate:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    if denoise is None or denoise > 0.9999:
        return calculate(steps)
    if denoise <= 0.0:
        return torch.zeros((0,), dtype=torch.float32)
    new_steps = int(steps / denoise)
    return calculate(new_steps)[-(steps + 1):]


def slice_sigmas(sigmas: Tensor, start_step: int | None = None, last_step: int | None = None,
                 force_full_denoise: bool = False) -> Tensor | None:
    """KSamplerAdvanced's start/end steps; None when start_step leaves nothing to do (the latent is returned)."""
    if last_step is not None and last_step < (len(sigmas) - 1):
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < (len(sigmas) - 1):
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas


class CFGDenoiser:
    """ComfyUI's CFGGuider.predict_noise/sampling_function: denoised latent for x at sigma, with CFG."""

    def __init__(self, denoiser: Denoiser, model_sampling: ModelSamplingDiscrete, positive: Sequence[Cond],
                 negative: Sequence[Cond], cfg: float, *, can_concat: CanConcat = default_can_concat,
                 max_batch: int | None = None) -> None:
        self.denoiser = denoiser
        self.model_sampling = model_sampling
        self.positive = positive
        self.negative = negative
        self.cfg = cfg
        self.can_concat = can_concat
        self.max_batch = max_batch

    def apply_model(self, input_x: Tensor, sigma: Tensor, entries: list[Any]) -> Tensor:
        """ComfyUI's BaseModel._apply_model: scale the input, call the UNet, convert its output to denoised."""
        ms = self.model_sampling
        xc = ms.calculate_input(sigma, input_x)
        t = ms.timestep(sigma).float()
        output = self.denoiser(xc, t, entries)
        return ms.calculate_denoised(sigma, output.float(), input_x)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        uncond = None if math.isclose(self.cfg, 1.0) else self.negative
        cond_pred, uncond_pred = calc_cond_batch(self.apply_model, [self.positive, uncond], x, sigma,
                                                 can_concat=self.can_concat, max_batch=self.max_batch)
        return uncond_pred + (cond_pred - uncond_pred) * self.cfg


class KSamplerX0Inpaint:
    """Keeps the unmasked part of the latent on its noised original at every model call (ComfyUI's
    KSamplerX0Inpaint): the model sees `x * mask + (latent + noise * sigma) * (1 - mask)` and its prediction is
    replaced by the original latent where the mask is 0."""

    def __init__(self, inner: Callable[[Tensor, Tensor], Tensor], model_sampling: ModelSamplingDiscrete,
                 latent_image: Tensor, noise: Tensor) -> None:
        self.inner = inner
        self.model_sampling = model_sampling
        self.latent_image = latent_image
        self.noise = noise

    def __call__(self, x: Tensor, sigma: Tensor, denoise_mask: Tensor | None = None, **_: Any) -> Tensor:
        if denoise_mask is None:
            return self.inner(x, sigma)
        latent_mask = 1.0 - denoise_mask
        reference = self.model_sampling.noise_scaling(
            sigma.reshape([sigma.shape[0]] + [1] * (len(self.noise.shape) - 1)), self.noise, self.latent_image)
        x = x * denoise_mask + reference * latent_mask
        out = self.inner(x, sigma)
        return out * denoise_mask + self.latent_image * latent_mask


def sample(denoiser: Denoiser, model_sampling: ModelSamplingDiscrete, noise: Tensor | None, latent_image: Tensor, *,
           seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: Sequence[Any],
           negative: Sequence[Any], denoise: float = 1.0, start_step: int | None = None,
           last_step: int | None = None, force_full_denoise: bool = False, disable_noise: bool = False,
           noise_mask: Tensor | None = None, callback: Callback | None = None, sigmas: Tensor | None = None,
           latent_format: LatentFormat | None = None, device: torch.device | str | None = None,
           sampler_options: dict[str, Any] | None = None, can_concat: CanConcat = default_can_concat,
           max_batch: int | None = None) -> Tensor:
    """Run a KSampler (or KSamplerAdvanced) and return the sampled LATENT samples (on latent_image's device).

    * `noise`: the initial noise (`prepare_noise(latent_image, seed, batch_index)`); None draws it from `seed`;
      `disable_noise` (KSamplerAdvanced add_noise "disable") uses zeros instead.
    * `seed` also seeds the samplers' own randomness (ancestral noise, Brownian trees, ddim's inpainting noise).
    * KSampler: `denoise`. KSamplerAdvanced: `start_step=start_at_step`, `last_step=end_at_step`,
      `force_full_denoise = return_with_leftover_noise == "disable"`, `disable_noise = add_noise == "disable"`.
    * `noise_mask`: the LATENT's "noise_mask" (inpainting; 1 = regenerate).
    * `latent_format`: the model's latent format (e.g. `SD15_LATENT_FORMAT`); None when `latent_image` is already
      in the model's latent space. As in ComfyUI, an all-zero latent is not shifted on the way in.
    * `sigmas`: a custom schedule, replacing steps/scheduler/denoise (still sliced by start/last step).
    * `callback({"i", "x", "denoised", "sigma", "sigma_hat", "total_steps"})` after each model evaluation.
    * `can_concat`/`max_batch`: how conditioning entries share model calls (see `conditioning.calc_cond_batch`).
    """
    spec = sampler_spec(sampler_name)
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    elif noise is None:
        noise = prepare_noise(latent_image, seed)
    if sigmas is None:
        sigmas = compute_sigmas(model_sampling, steps, sampler_name, scheduler, denoise)
    sliced = slice_sigmas(sigmas, start_step, last_step, force_full_denoise)
    if sliced is None or sliced.shape[-1] == 0:
        return latent_image
    out_device = latent_image.device
    run_device = torch.device(device) if device is not None else latent_image.device
    ms = model_sampling.to(run_device)
    noise = noise.to(device=run_device, dtype=torch.float32)
    latent = latent_image.to(device=run_device, dtype=torch.float32)
    sigmas = sliced.to(run_device)
    denoise_mask = prepare_mask(noise_mask, noise.shape, run_device) if noise_mask is not None else None
    if latent_format is not None and torch.count_nonzero(latent) > 0:
        latent = latent_format.process_in(latent)

    conds = process_conds({"positive": positive, "negative": negative}, ms, noise.shape, run_device)
    guider = CFGDenoiser(denoiser, ms, conds["positive"], conds["negative"], cfg, can_concat=can_concat,
                         max_batch=max_batch)
    if spec.inpaint_random_noise:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed + 1)
        inpaint_noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
    else:
        inpaint_noise = noise
    model = KSamplerX0Inpaint(guider, ms, latent, inpaint_noise)

    x = ms.noise_scaling(sigmas[0], noise, latent, is_max_denoise(ms, sigmas))
    total_steps = len(sigmas) - 1

    def step_callback(info: dict[str, Any]) -> None:
        if callback is not None:
            callback({**info, "total_steps": total_steps})

    extra_args: dict[str, Any] = {"seed": seed, "denoise_mask": denoise_mask}
    samples = spec.function(model, x, sigmas, extra_args=extra_args, callback=step_callback, disable=True,
                            **{**spec.options, **(sampler_options or {})})
    samples = ms.inverse_noise_scaling(sigmas[-1], samples)
    samples = samples.to(torch.float32)
    if latent_format is not None:
        samples = latent_format.process_out(samples)
    return samples.to(out_device)
