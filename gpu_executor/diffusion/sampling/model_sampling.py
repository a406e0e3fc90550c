"""The discrete noise schedule of Stable Diffusion (SD1.x, SD2.x, SDXL) in ComfyUI's terms.

A diffusion model sees a noisy latent `x = x0 + sigma * noise` (k-diffusion's "variance exploding" view of the
DDPM schedule). This module holds the table of the 1000 training sigmas and the conversions ComfyUI performs
between sigmas, timesteps and model inputs/outputs (`comfy/model_sampling.py`):

* `calculate_input(sigma, x)`: what the UNet is fed, `x / sqrt(sigma² + 1)`;
* `calculate_denoised(sigma, output, x)`: the denoised latent from the raw output (eps or v prediction);
* `noise_scaling` / `inverse_noise_scaling`: how the initial noise is mixed with the input latent;
* `timestep(sigma)`: the nearest training timestep (argmin of the log-sigma distance, an integer);
* `sigma(timestep)`: log-linear interpolation in the table for fractional timesteps;
* `percent_to_sigma`: the sigma at a fraction of the schedule (conditioning timestep ranges, ControlNet ranges).

Every expression keeps ComfyUI's operand order and dtypes (the table is built in float64 and stored in float32,
the log table is taken in float64 then stored in float32), so the sigmas and the arithmetic match it bit for bit.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import Tensor

PredictionType = Literal["eps", "v_prediction", "lcm"]

# ComfyUI's names: its "linear" schedule is linear in sqrt(beta) (what diffusers calls "scaled_linear"); its
# "sqrt_linear" is linear in beta (diffusers' "linear"). "scaled_linear" is accepted as an alias of "linear".
BetaSchedule = Literal["linear", "scaled_linear", "sqrt_linear", "sqrt"]


def make_beta_schedule(schedule: BetaSchedule, n_timestep: int, linear_start: float = 1e-4,
                       linear_end: float = 2e-2) -> Tensor:
    """The betas (float64) of a named schedule, as ComfyUI's `make_beta_schedule` builds them."""
    if schedule in ("linear", "scaled_linear"):
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64) ** 0.5
    raise ValueError(f"unknown beta schedule {schedule!r}")


def rescale_zero_terminal_snr_sigmas(sigmas: Tensor) -> Tensor:
    """Zero terminal SNR (ComfyUI's `zsnr` option, ModelSamplingDiscrete's `zsnr` input)."""
    alphas_cumprod = 1 / ((sigmas * sigmas) + 1)
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    first = alphas_bar_sqrt[0].clone()
    last = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def _per_batch(sigma: Tensor, ndim: int) -> Tensor:
    """`sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))`: a batch of sigmas broadcast over the other dims."""
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class ModelSamplingDiscrete:
    """ComfyUI's `ModelSamplingDiscrete` combined with a prediction type (`EPS` or `V_PREDICTION`).

    Defaults are SD1.x/SD2.x/SDXL's: 1000 timesteps, betas linear in sqrt-space from 0.00085 to 0.012.
    """

    sigma_data = 1.0

    def __init__(self, prediction_type: PredictionType = "eps", *, beta_schedule: BetaSchedule = "linear",
                 linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000,
                 zsnr: bool = False) -> None:
        if prediction_type not in ("eps", "v_prediction", "lcm"):
            raise ValueError(f"unknown prediction type {prediction_type!r}")
        self.prediction_type: PredictionType = prediction_type
        betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        self.zsnr = zsnr
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: Tensor) -> None:
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    def to(self, device: torch.device | str) -> ModelSamplingDiscrete:
        """A copy whose tables live on `device` (ComfyUI keeps them on the model's device)."""
        moved = copy.copy(self)
        moved.sigmas = self.sigmas.to(device)
        moved.log_sigmas = self.log_sigmas.to(device)
        return moved

    @property
    def sigma_min(self) -> Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor) -> Tensor:
        """The index of the nearest sigma of the table in log space (int64, sigma's shape and device)."""
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: Tensor) -> Tensor:
        """The sigma at a (fractional) timestep: linear interpolation of log sigma between the table entries."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        return float(self.sigma(torch.tensor(percent * 999.0)).item())

    # -- prediction (EPS / V_PREDICTION / LCM) -------------------------------------------------------------

    def calculate_input(self, sigma: Tensor, noise: Tensor) -> Tensor:
        sigma = _per_batch(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor) -> Tensor:
        if self.prediction_type == "v_prediction":
            sigma = _per_batch(sigma, model_output.ndim)
            return (model_input * self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
                    - model_output * sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5)
        if self.prediction_type == "lcm":
            return self._lcm_denoised(sigma, model_output, model_input)
        sigma = _per_batch(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def _lcm_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor) -> Tensor:
        # comfy_extras/nodes_model_advanced.py LCM: consistency-model boundary conditions on top of eps.
        timestep = self.timestep(sigma).view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        sigma = _per_batch(sigma, model_output.ndim)
        x0 = model_input - model_output * sigma
        sigma_data = 0.5
        scaled_timestep = timestep * 10.0
        c_skip = sigma_data ** 2 / (scaled_timestep ** 2 + sigma_data ** 2)
        c_out = scaled_timestep / (scaled_timestep ** 2 + sigma_data ** 2) ** 0.5
        return c_out * x0 + c_skip * model_input

    def noise_scaling(self, sigma: Tensor, noise: Tensor, latent_image: Tensor, max_denoise: bool = False) -> Tensor:
        """The starting latent: `latent + noise * sigma` (`* sqrt(1 + sigma²)` at the schedule's top)."""
        sigma = _per_batch(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        noise += latent_image
        return noise

    def inverse_noise_scaling(self, sigma: Tensor, latent: Tensor) -> Tensor:
        return latent


class ModelSamplingDiscreteDistilled(ModelSamplingDiscrete):
    """The LCM schedule of ComfyUI's `ModelSamplingDiscrete` node with sampling "lcm": 50 of the 1000 sigmas.

    Only used when a workflow patches the model with that node; the plain "lcm" sampler on an ordinary model
    uses `ModelSamplingDiscrete`.
    """

    original_timesteps = 50

    def __init__(self, prediction_type: PredictionType = "lcm", *, beta_schedule: BetaSchedule = "linear",
                 linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000,
                 zsnr: bool = False) -> None:
        super().__init__(prediction_type, beta_schedule=beta_schedule, linear_start=linear_start,
                         linear_end=linear_end, timesteps=timesteps, zsnr=zsnr)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        sigmas_valid = torch.zeros((self.original_timesteps,), dtype=torch.float32)
        for x in range(self.original_timesteps):
            sigmas_valid[self.original_timesteps - 1 - x] = self.sigmas[self.num_timesteps - 1 - x * self.skip_steps]
        self.set_sigmas(sigmas_valid)

    def timestep(self, sigma: Tensor) -> Tensor:
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip_steps + (self.skip_steps - 1)).to(sigma.device)

    def sigma(self, timestep: Tensor) -> Tensor:
        t = torch.clamp(((timestep.float().to(self.log_sigmas.device) - (self.skip_steps - 1))
                         / self.skip_steps).float(), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)


def is_max_denoise(model_sampling: ModelSamplingDiscrete, sigmas: Tensor) -> bool:
    """ComfyUI's `Sampler.max_denoise`: does sampling start at (or above) the top of the schedule?"""
    max_sigma = float(model_sampling.sigma_max)
    sigma = float(sigmas[0])
    return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma
