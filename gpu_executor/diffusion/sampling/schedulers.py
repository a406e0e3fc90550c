"""Noise schedules: the decreasing sigmas a sampler walks through, ending with 0 (ComfyUI's `KSampler.SCHEDULERS`).

Each function reproduces the one ComfyUI registers under the same name (`comfy/samplers.py` and, for karras and
exponential, `comfy/k_diffusion/sampling.py`), including its quirks: "normal" spaces timesteps linearly from the
first to the last training timestep inclusive while "sgm_uniform" drops the last point; "ddim_uniform" walks the
table with an integer stride from index 1 (so a step count that does not divide 1000 yields extra steps);
"simple" picks table entries at a float stride. All results are float32 tensors on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy
import torch
from torch import Tensor

from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete

# ComfyUI's order (KSampler's scheduler combo, as recorded from its object_info).
SCHEDULER_NAMES: list[str] = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                              "linear_quadratic", "kl_optimal"]


def append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                      device: torch.device | str = "cpu") -> Tensor:
    """Karras et al. (2022), eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n, device=device)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device: torch.device | str = "cpu") -> Tensor:
    """Sigmas evenly spaced in log sigma."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp()
    return append_zero(sigmas)


def simple_scheduler(model_sampling: ModelSamplingDiscrete, steps: int) -> Tensor:
    s = model_sampling
    sigs: list[float] = []
    ss = len(s.sigmas) / steps
    for x in range(steps):
        sigs += [float(s.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.tensor(sigs, dtype=torch.float32)


def ddim_scheduler(model_sampling: ModelSamplingDiscrete, steps: int) -> Tensor:
    s = model_sampling
    x = 1
    sigs: list[float]
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs += [float(s.sigmas[x])]
        x += ss
    sigs = sigs[::-1]
    return torch.tensor(sigs, dtype=torch.float32)


def normal_scheduler(model_sampling: ModelSamplingDiscrete, steps: int, sgm: bool = False) -> Tensor:
    s = model_sampling
    start = s.timestep(s.sigma_max)
    end = s.timestep(s.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]  # type: ignore[arg-type]  # 0-dim tensors
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append = False
        timesteps = torch.linspace(start, end, steps)  # type: ignore[arg-type]
    sigs = [float(s.sigma(timesteps[x])) for x in range(len(timesteps))]
    if append:
        sigs += [0.0]
    return torch.tensor(sigs, dtype=torch.float32)


def sgm_uniform_scheduler(model_sampling: ModelSamplingDiscrete, steps: int) -> Tensor:
    return normal_scheduler(model_sampling, steps, sgm=True)


def beta_scheduler(model_sampling: ModelSamplingDiscrete, steps: int, alpha: float = 0.6,
                   beta: float = 0.6) -> Tensor:
    """Timesteps at the quantiles of a Beta(alpha, beta) distribution (arXiv:2407.12173), duplicates dropped."""
    total_timesteps = len(model_sampling.sigmas) - 1
    ts = 1 - numpy.linspace(0, 1, steps, endpoint=False)
    import scipy.stats  # type: ignore[import-untyped]  # only the beta scheduler needs it; it takes 0.7 s

    ts = numpy.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total_timesteps)
    sigs: list[float] = []
    last_t = -1.0
    for t in ts:
        if t != last_t:
            sigs += [float(model_sampling.sigmas[int(t)])]
        last_t = t
    sigs += [0.0]
    return torch.tensor(sigs, dtype=torch.float32)


def linear_quadratic_schedule(model_sampling: ModelSamplingDiscrete, steps: int, threshold_noise: float = 0.025,
                              linear_steps: int | None = None) -> Tensor:
    """Mochi's schedule: linear then quadratic in 1 - sigma/sigma_max."""
    if steps == 1:
        sigma_schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear_sigma_schedule = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        threshold_noise_step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = threshold_noise_step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * threshold_noise_step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic_sigma_schedule = [quadratic_coef * (i ** 2) + linear_coef * i + const
                                    for i in range(linear_steps, steps)]
        sigma_schedule = linear_sigma_schedule + quadratic_sigma_schedule + [1.0]
        sigma_schedule = [1.0 - x for x in sigma_schedule]
    return torch.tensor(sigma_schedule, dtype=torch.float32) * model_sampling.sigma_max.cpu()


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """"Align Your Steps"-style KL-optimal schedule: evenly spaced in arctan(sigma)."""
    adj_idxs = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = adj_idxs.new_zeros(n + 1)
    sigmas[:-1] = (adj_idxs * math.atan(sigma_min) + (1 - adj_idxs) * math.atan(sigma_max)).tan_()
    return sigmas


def _karras(model_sampling: ModelSamplingDiscrete, steps: int) -> Tensor:
    return get_sigmas_karras(n=steps, sigma_min=float(model_sampling.sigma_min),
                             sigma_max=float(model_sampling.sigma_max))


def _exponential(model_sampling: ModelSamplingDiscrete, steps: int) -> Tensor:
    return get_sigmas_exponential(n=steps, sigma_min=float(model_sampling.sigma_min),
                                  sigma_max=float(model_sampling.sigma_max))


def _kl_optimal(model_sampling: ModelSamplingDiscrete, steps: int) -> Tensor:
    return kl_optimal_scheduler(n=steps, sigma_min=float(model_sampling.sigma_min),
                                sigma_max=float(model_sampling.sigma_max))


SCHEDULERS: dict[str, Callable[[ModelSamplingDiscrete, int], Tensor]] = {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": _karras,
    "exponential": _exponential,
    "ddim_uniform": ddim_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_schedule,
    "kl_optimal": _kl_optimal,
}


def calculate_sigmas(model_sampling: ModelSamplingDiscrete, scheduler_name: str, steps: int) -> Tensor:
    """The `steps + 1` sigmas (last one 0) of a named schedule; ComfyUI's `comfy.samplers.calculate_sigmas`."""
    handler = SCHEDULERS.get(scheduler_name)
    if handler is None:
        raise ValueError(f"invalid scheduler {scheduler_name!r}")
    return handler(model_sampling, steps)
