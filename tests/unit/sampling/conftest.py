"""Analytic stand-ins for a diffusion model: data whose exact denoiser is known in closed form.

For data x0 ~ N(mu, s²) (s = 0: the single point mu), the exact denoiser at noise level sigma is
D(x, sigma) = E[x0 | x] = (s² x + sigma² mu) / (s² + sigma²). The probability-flow ODE then maps x at sigma0 to
mu + (x - mu) * sqrt((s² + sigma²) / (s² + sigma0²)), which the tests use as the exact answer.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete


def exact_denoised(x: Tensor, sigma: Tensor, mu: float, s: float) -> Tensor:
    sigma = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)


def ode_solution(x0: Tensor, sigma0: float, sigma1: float, mu: float, s: float) -> Tensor:
    return mu + (x0 - mu) * math.sqrt((s ** 2 + sigma1 ** 2) / (s ** 2 + sigma0 ** 2))


class GaussianModel:
    """k-diffusion level model: model(x, sigma) -> denoised, counting its calls."""

    def __init__(self, mu: float, s: float) -> None:
        self.mu, self.s, self.calls = mu, s, 0

    def __call__(self, x: Tensor, sigma: Tensor, **_: Any) -> Tensor:
        self.calls += 1
        return exact_denoised(x, sigma, self.mu, self.s)


class GaussianUNet:
    """A 'UNet' for ksampler.sample: gets the scaled input and the integer timestep, returns eps or v.

    It recovers sigma from the timestep through the table (exact for sigmas on the table, e.g. the "simple"
    schedule) and x from the input scaling x_in = x / sqrt(sigma² + 1).
    """

    def __init__(self, model_sampling: ModelSamplingDiscrete, mu: float, s: float, v_prediction: bool = False,
                 ) -> None:
        self.ms, self.mu, self.s, self.v = model_sampling, mu, s, v_prediction
        self.calls: list[list[Any]] = []

    def __call__(self, x_in: Tensor, timestep: Tensor, conds: list[Any]) -> Tensor:
        self.calls.append(conds)
        sigma = self.ms.sigmas.to(x_in.device)[timestep.long()].view(-1, 1, 1, 1)
        x = x_in * (sigma ** 2 + 1) ** 0.5
        denoised = exact_denoised(x, sigma.flatten(), self.mu, self.s)
        eps = (x - denoised) / sigma
        if not self.v:
            return eps
        alpha, sigma_vp = 1 / (sigma ** 2 + 1) ** 0.5, sigma / (sigma ** 2 + 1) ** 0.5
        return alpha * eps - sigma_vp * denoised  # diffusers' v = alpha_t * eps - sigma_t * x0


@pytest.fixture(scope="session")
def ms() -> ModelSamplingDiscrete:
    return ModelSamplingDiscrete()


def entry(value: float = 0.0, tokens: int = 77, **options: Any) -> list[Any]:
    """A conditioning entry [tensor, options] whose tensor is filled with `value`."""
    return [torch.full((1, tokens, 8), value), dict(options)]
