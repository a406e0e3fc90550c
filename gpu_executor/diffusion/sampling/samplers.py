"""k-diffusion samplers as ComfyUI runs them (`comfy/k_diffusion/sampling.py`, `comfy/samplers.py`).

Every sampler has k-diffusion's signature, `sample_<name>(model, x, sigmas, extra_args, callback, disable,
**options)`, where `model(x, sigma_batch, **extra_args)` returns the denoised latent and `x` is the already
noised starting latent. The update formulas keep ComfyUI's operand order, and the random numbers come from the
same generators ComfyUI uses:

* ancestral samplers draw step noise from a `torch.Generator` on x's device seeded with `extra_args["seed"]`
  (plus one on the CPU, so that it differs from the initial noise, which is drawn from the same seed there);
* the SDE samplers draw Brownian increments from a `torchsde.BrownianTree` with the seed as entropy, on the CPU
  ("dpmpp_2m_sde") or on x's device ("dpmpp_2m_sde_gpu").

Each step calls `gpu_executor.engine.runtime.check_interrupted()` first, then `callback({"x", "i", "sigma",
"sigma_hat", "denoised"})` once the model has been evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torchsde  # type: ignore[import-untyped]
from torch import Tensor

from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from gpu_executor.engine import runtime

Callback = Callable[[dict[str, Any]], None]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


class DenoiseModel(Protocol):
    """A denoiser: the denoised latent for `x` at noise level `sigma` (one sigma per batch item)."""

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor: ...


# sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> samples
SamplerFunction = Callable[..., Tensor]


def _steps(n: int) -> Iterator[int]:
    """range(n), checking for interruption before each step (ComfyUI checks in its progress bar hook)."""
    for i in range(n):
        runtime.check_interrupted()
        yield i


def append_dims(x: Tensor, target_dims: int) -> Tensor:
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The Karras ODE derivative dx/dsigma = (x - D(x)) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor | float]:
    """The noise level to step down to (sigma_down) and the noise to add back (sigma_up) for an ancestral step:
    sigma_up² + sigma_down² = sigma_to², sigma_up = eta * sigma_to * sqrt(1 - sigma_to²/sigma_from²)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x: Tensor, seed: int | None = None) -> NoiseSampler:
    """Fresh Gaussian noise shaped like x at every call, from a generator on x's device seeded with `seed`."""
    generator: torch.Generator | None = None
    if seed is not None:
        if x.device == torch.device("cpu"):
            seed += 1
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


class BatchedBrownianTree:
    """torchsde.BrownianTree over x's shape; on the CPU (float32 queries) unless `cpu` is False."""

    def __init__(self, x: Tensor, t0: Tensor, t1: Tensor, seed: int | None = None, cpu: bool = True) -> None:
        self.cpu_tree = cpu
        t0, t1, self.sign = self.sort(t0, t1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, []).item())
        if self.cpu_tree:
            self.tree = torchsde.BrownianTree(t0.cpu(), w0.cpu(), t1.cpu(), entropy=seed)
        else:
            self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    @staticmethod
    def sort(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, int]:
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0: Tensor, t1: Tensor) -> Tensor:
        t0, t1, sign = self.sort(t0, t1)
        if self.cpu_tree:
            w = self.tree(t0.cpu().float(), t1.cpu().float()).to(t0.dtype).to(t0.device)
        else:
            w = self.tree(t0, t1)
        result: Tensor = w * (self.sign * sign)
        return result


class BrownianTreeNoiseSampler:
    """Unit-variance Brownian increments between two sigmas (k-diffusion's BrownianTreeNoiseSampler)."""

    def __init__(self, x: Tensor, sigma_min: Tensor, sigma_max: Tensor, seed: int | None = None,
                 transform: Callable[[Tensor], Tensor] = lambda t: t, cpu: bool = False) -> None:
        self.transform = transform
        t0, t1 = self.transform(torch.as_tensor(sigma_min)), self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed, cpu=cpu)

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


def _callback(callback: Callback | None, x: Tensor, i: int, sigma: Tensor, sigma_hat: Tensor,
              denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(x: Tensor, sigmas: Tensor, i: int, s_churn: float, s_tmin: float, s_tmax: float,
           s_noise: float) -> tuple[Tensor, Tensor]:
    """Karras' stochastic churn (off by default): raise sigma to sigma_hat by adding noise."""
    if s_churn > 0:
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
    else:
        gamma = 0
        sigma_hat = sigmas[i]
    if gamma > 0:
        eps = torch.randn_like(x) * s_noise
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Karras et al. (2022) Algorithm 2 with Euler steps."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _callback(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


@torch.no_grad()
def sample_euler_ancestral(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                           callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Ancestral sampling with Euler steps."""
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed")
    noise_sampler = default_noise_sampler(x, seed=seed) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _callback(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Karras et al. (2022) Algorithm 2 (Heun steps; Euler for the last step to sigma 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _callback(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-2 style midpoint steps (midpoint in log sigma), Euler for the last step."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _callback(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            dt = sigmas[i + 1] - sigma_hat
            x = x + d * dt
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            dt_1 = sigma_mid - sigma_hat
            dt_2 = sigmas[i + 1] - sigma_hat
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                           callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps."""
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed")
    noise_sampler = default_noise_sampler(x, seed=seed) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _callback(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            dt_1 = sigma_mid - sigmas[i]
            dt_2 = sigma_down - sigmas[i]
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                    callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in t = -log(sigma)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(t: Tensor) -> Tensor:
        return t.neg().exp()

    def t_fn(sigma: Tensor) -> Tensor:
        return sigma.log().neg()

    old_denoised: Tensor | None = None
    for i in _steps(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _callback(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sigma_to_half_log_snr(sigma: Tensor) -> Tensor:
    """log(alpha_t / sigma_t) for the variance-exploding parametrisation: -log(sigma)."""
    return sigma.log().neg()


@torch.no_grad()
def sample_dpmpp_2m_sde(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                        callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        solver_type: str = "midpoint", brownian_on_cpu: bool = True) -> Tensor:
    """DPM-Solver++(2M) SDE with Brownian-tree noise (midpoint or heun second-order correction)."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed")
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    if noise_sampler is None:
        noise_sampler = BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=brownian_on_cpu)
    s_in = x.new_ones([x.shape[0]])

    old_denoised: Tensor | None = None
    h: Tensor | None = None
    h_last: Tensor | None = None
    for i in _steps(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _callback(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = sigma_to_half_log_snr(sigmas[i]), sigma_to_half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    -2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_gpu(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                            callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                            s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                            solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE with the Brownian tree on x's device."""
    return sample_dpmpp_2m_sde(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, eta=eta,
                               s_noise=s_noise, noise_sampler=noise_sampler, solver_type=solver_type,
                               brownian_on_cpu=False)


@torch.no_grad()
def sample_lcm(model: DenoiseModel, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
               callback: Callback | None = None, disable: bool | None = None,
               noise_sampler: NoiseSampler | None = None, s_noise: float = 1.0, s_noise_end: float | None = None,
               noise_clip_std: float = 0.0) -> Tensor:
    """Latent Consistency Model sampling: jump to the denoised latent, re-noise it to the next sigma.

    The re-noising uses the model's own noise scaling (`model.model_sampling` when the model has one, otherwise
    `denoised + noise * sigma`). `s_noise`/`s_noise_end` (a per-step multiplier ramp) and `noise_clip_std` are the
    SamplerLCM node's options; their defaults leave the noise untouched.
    """
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed")
    noise_sampler = default_noise_sampler(x, seed=seed) if noise_sampler is None else noise_sampler
    model_sampling: ModelSamplingDiscrete | None = getattr(model, "model_sampling", None)
    s_start = s_noise
    s_end = s_noise if s_noise_end is None else s_noise_end
    n_steps = max(1, len(sigmas) - 1)
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _callback(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            if noise_clip_std > 0:
                clip_val = noise_clip_std * noise.std()
                noise = noise.clamp(min=-clip_val, max=clip_val)
            t = (i / (n_steps - 1)) if n_steps > 1 else 0.0
            s_noise_i = s_start + (s_end - s_start) * t
            if s_noise_i != 1.0:
                noise = noise * s_noise_i
            if model_sampling is not None:
                x = model_sampling.noise_scaling(sigmas[i + 1], noise, x)
            else:
                x = noise * sigmas[i + 1] + x
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """What ComfyUI's `sampler_object(name)` builds: the function, its options, and whether the inpainting
    reference noise is drawn afresh from seed + 1 (ddim) instead of reusing the initial noise."""

    function: SamplerFunction
    options: dict[str, Any] = field(default_factory=dict)
    inpaint_random_noise: bool = False


_FUNCTIONS: dict[str, SamplerFunction] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde_gpu,
    "lcm": sample_lcm,
}

# ComfyUI's KSampler.SAMPLERS order, restricted to the samplers implemented here.
SAMPLER_NAMES: list[str] = [*_FUNCTIONS, "ddim"]

# Samplers that evaluate the model twice per step: ComfyUI computes one more sigma and drops the penultimate one.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def sampler_spec(name: str) -> SamplerSpec:
    """The sampler a KSampler `sampler_name` runs; "ddim" is ComfyUI's euler with random inpainting noise."""
    if name == "ddim":
        return SamplerSpec(sample_euler, inpaint_random_noise=True)
    function = _FUNCTIONS.get(name)
    if function is None:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLER_NAMES)}")
    return SamplerSpec(function)
