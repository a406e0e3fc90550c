"""The samplers on analytic problems (Gaussian data with its exact denoiser) and against the published update
equations, plus their randomness: seeded, reproducible, and drawn the way ComfyUI draws it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from gpu_executor.diffusion.sampling import samplers
from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from gpu_executor.diffusion.sampling.samplers import (
    SAMPLER_NAMES,
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    get_ancestral_step,
    sampler_spec,
)
from gpu_executor.diffusion.sampling.schedulers import get_sigmas_karras
from gpu_executor.engine import runtime
from tests.unit.sampling.conftest import GaussianModel, ode_solution

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")]

DETERMINISTIC = ["euler", "heun", "dpm_2", "dpmpp_2m", "ddim"]
STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "lcm"]

# ComfyUI's KSampler sampler combo, as recorded from its object_info.
COMFY_SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
                  "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
                  "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu",
                  "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
                  "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v",
                  "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
                  "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
                  "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]

SIGMAS = get_sigmas_karras(30, 0.0291675, 14.614642)


def run(name: str, model: Any, x: Tensor, sigmas: Tensor = SIGMAS, seed: int | None = 0, **options: Any) -> Tensor:
    spec = sampler_spec(name)
    return spec.function(model, x, sigmas, extra_args={"seed": seed}, **{**spec.options, **options})


def test_names_follow_comfyui_order() -> None:
    assert [n for n in COMFY_SAMPLERS if n in SAMPLER_NAMES] == SAMPLER_NAMES
    assert set(SAMPLER_NAMES) == set(DETERMINISTIC) | set(STOCHASTIC)
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_spec("uni_pc")


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_lands_on_a_single_data_point(name: str) -> None:
    model = GaussianModel(mu=0.7, s=0.0)
    x = torch.randn(2, 4, 8, 8, generator=torch.manual_seed(3)) * float(SIGMAS[0])
    out = run(name, model, x)
    torch.testing.assert_close(out, torch.full_like(out, 0.7), rtol=0, atol=1e-5)


# The probability-flow ODE of Gaussian data is linear: x(0) - mu = k * (x(sigma_max) - mu), k known exactly.
@pytest.mark.parametrize(("name", "tolerance"), [("euler", 0.1), ("ddim", 0.1), ("heun", 0.01), ("dpm_2", 0.01),
                                                  ("dpmpp_2m", 0.01)])
def test_deterministic_samplers_follow_the_probability_flow_ode(name: str, tolerance: float) -> None:
    mu, s = 0.5, 0.8
    x = mu + torch.randn(1, 4, 8, 8, generator=torch.manual_seed(1)) * float(SIGMAS[0])
    out = run(name, GaussianModel(mu, s), x)
    exact = ode_solution(x, float(SIGMAS[0]), 0.0, mu, s)
    k_got = float(((out - mu) / (x - mu)).mean())
    k_exact = float(((exact - mu) / (x - mu)).mean())
    assert k_got == pytest.approx(k_exact, rel=tolerance)
    assert float(((out - mu) / (x - mu)).std()) < 1e-5  # the map is linear, as it must be


@pytest.mark.parametrize("name", [n for n in STOCHASTIC if n != "lcm"])
def test_stochastic_samplers_sample_the_data_distribution(name: str) -> None:
    mu, s = -0.3, 0.6
    sigmas = get_sigmas_karras(100, 0.0291675, 14.614642)
    x = mu + torch.randn(4, 4, 32, 32, generator=torch.manual_seed(2)) * math.sqrt(s ** 2 + float(sigmas[0]) ** 2)
    out = run(name, GaussianModel(mu, s), x, sigmas=sigmas, seed=11)
    assert float(out.mean()) == pytest.approx(mu, abs=0.02)
    assert float(out.std()) == pytest.approx(s, rel=0.05)


def test_lcm_alternates_denoising_and_renoising() -> None:
    """x_{i+1} = D(x_i) + sigma_{i+1} n: with D(x) - mu = c (x - mu), c = s²/(s² + sigma²), the variance follows
    V_{i+1} = c_i² V_i + sigma_{i+1}² and the result has variance c_last² V_last."""
    mu, s = -0.3, 0.6
    x = mu + torch.randn(4, 4, 32, 32, generator=torch.manual_seed(2)) * float(SIGMAS[0])
    out = run("lcm", GaussianModel(mu, s), x, seed=11)
    sig = SIGMAS.double().tolist()
    variance = sig[0] ** 2
    for i in range(len(sig) - 1):
        c = s ** 2 / (s ** 2 + sig[i] ** 2)
        variance = c ** 2 * variance + sig[i + 1] ** 2
    assert float(out.mean()) == pytest.approx(mu, abs=0.02)
    assert float(out.std()) == pytest.approx(math.sqrt(variance), rel=0.03)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_same_seed_same_result_and_other_seed_differs_when_stochastic(name: str) -> None:
    x = torch.randn(1, 4, 8, 8, generator=torch.manual_seed(4)) * 14.6
    a = run(name, GaussianModel(0.1, 0.5), x, seed=5)
    b = run(name, GaussianModel(0.1, 0.5), x, seed=5)
    c = run(name, GaussianModel(0.1, 0.5), x, seed=6)
    assert torch.equal(a, b)
    assert (not torch.equal(a, c)) == (name in STOCHASTIC)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_euler_and_heun_are_the_textbook_discretisations(name: str) -> None:
    """On x' = (x - D(x, sigma)) / sigma with Gaussian data, one Euler step multiplies x - mu by 1 + a_i dt and a
    Heun step by 1 + dt (a_i + a_next (1 + a_i dt)) / 2, where a(sigma) = sigma / (s² + sigma²)."""
    mu, s = 0.5, 0.8
    x = mu + torch.randn(1, 4, 8, 8, generator=torch.manual_seed(1)) * float(SIGMAS[0])
    out = run(name, GaussianModel(mu, s), x)
    sig = SIGMAS.double().tolist()
    k = 1.0
    for i in range(len(sig) - 1):
        a_i, dt = sig[i] / (s ** 2 + sig[i] ** 2), sig[i + 1] - sig[i]
        if name == "euler" or sig[i + 1] == 0:
            k *= 1 + a_i * dt
        else:
            a_next = sig[i + 1] / (s ** 2 + sig[i + 1] ** 2)
            k *= 1 + dt * (a_i + a_next * (1 + a_i * dt)) / 2
    torch.testing.assert_close(out, mu + (x - mu) * k, rtol=1e-4, atol=1e-5)


def test_ancestral_step_matches_k_diffusion_equations() -> None:
    sigma_from, sigma_to = torch.tensor(3.0), torch.tensor(2.0)
    down, up = get_ancestral_step(sigma_from, sigma_to)
    expected_up = math.sqrt(4.0 * (9.0 - 4.0) / 9.0)
    assert float(up) == pytest.approx(expected_up) and float(down) == pytest.approx(math.sqrt(4.0 - expected_up ** 2))
    down, up = get_ancestral_step(sigma_from, sigma_to, eta=0.0)
    assert down is sigma_to and up == 0.0
    down, up = get_ancestral_step(sigma_from, torch.tensor(0.0))
    assert float(down) == 0.0 and float(up) == 0.0


def test_default_noise_sampler_seeds_a_generator_with_seed_plus_one_on_the_cpu() -> None:
    x = torch.zeros(1, 4, 2, 2)
    draw = default_noise_sampler(x, seed=10)
    generator = torch.Generator().manual_seed(11)
    first, second = torch.randn(x.shape, generator=generator), torch.randn(x.shape, generator=generator)
    assert torch.equal(draw(torch.tensor(1.0), torch.tensor(0.5)), first)
    assert torch.equal(draw(torch.tensor(0.5), torch.tensor(0.2)), second)


def test_euler_ancestral_step_is_euler_to_sigma_down_plus_fresh_noise() -> None:
    model = GaussianModel(0.2, 0.5)
    x = torch.randn(1, 4, 4, 4, generator=torch.manual_seed(8)) * 3
    sigmas = torch.tensor([3.0, 1.5])
    out = run("euler_ancestral", model, x, sigmas=sigmas, seed=21)
    down, up = get_ancestral_step(sigmas[0], sigmas[1])
    denoised = model(x, sigmas[:1])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(22))
    expected = x + (x - denoised) / 3.0 * (down - 3.0) + noise * up
    torch.testing.assert_close(out, expected)


def dpmpp_2m_reference(x: np.ndarray, sigmas: np.ndarray, denoise: Any) -> np.ndarray:
    """DPM-Solver++(2M), Lu et al. (2022) Algorithm 2, with lambda = -log(sigma) and alpha = 1 (VE), float64."""
    lam = -np.log(sigmas[:-1])
    previous = None
    for i in range(len(sigmas) - 1):
        d = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = d
        else:
            h = lam[i + 1] - lam[i] if i + 1 < len(lam) else np.inf
            if previous is None:
                x = sigmas[i + 1] / sigmas[i] * x - np.expm1(-h) * d
            else:
                r = (lam[i] - lam[i - 1]) / h
                x = sigmas[i + 1] / sigmas[i] * x - np.expm1(-h) * ((1 + 1 / (2 * r)) * d - 1 / (2 * r) * previous)
        previous = d
    return x


def test_dpmpp_2m_matches_the_paper_algorithm() -> None:
    mu, s = 0.25, 0.7
    x = torch.randn(1, 4, 4, 4, generator=torch.manual_seed(5)) * 14.6
    out = run("dpmpp_2m", GaussianModel(mu, s), x, sigmas=SIGMAS)
    expected = dpmpp_2m_reference(x.double().numpy(), SIGMAS.double().numpy(),
                                  lambda v, sg: (s ** 2 * v + sg ** 2 * mu) / (s ** 2 + sg ** 2))
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m() -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.manual_seed(6)) * 14.6
    a = run("dpmpp_2m", GaussianModel(0.3, 0.4), x)
    b = run("dpmpp_2m_sde", GaussianModel(0.3, 0.4), x, eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_heun_evaluates_twice_per_step_but_once_for_the_last() -> None:
    model = GaussianModel(0.0, 1.0)
    run("heun", model, torch.randn(1, 4, 2, 2), sigmas=torch.tensor([5.0, 2.0, 1.0, 0.0]))
    assert model.calls == 5


def test_brownian_tree_noise_is_seeded_and_has_unit_variance() -> None:
    x = torch.zeros(1, 4, 64, 64)
    a = BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=7, cpu=True)
    b = BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=7, cpu=True)
    c = BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=8, cpu=True)
    w_a = a(torch.tensor(5.0), torch.tensor(3.0))
    assert torch.equal(w_a, b(torch.tensor(5.0), torch.tensor(3.0)))
    assert not torch.equal(w_a, c(torch.tensor(5.0), torch.tensor(3.0)))
    assert float(w_a.std()) == pytest.approx(1.0, rel=0.05) and abs(float(w_a.mean())) < 0.05


def test_callback_reports_every_step() -> None:
    seen: list[dict[str, Any]] = []
    sigmas = torch.tensor([5.0, 2.0, 1.0, 0.0])
    sampler_spec("euler").function(GaussianModel(0.0, 1.0), torch.randn(1, 4, 2, 2), sigmas, callback=seen.append)
    assert [info["i"] for info in seen] == [0, 1, 2]
    assert [float(info["sigma"]) for info in seen] == [5.0, 2.0, 1.0]
    assert all({"x", "denoised", "sigma_hat"} <= info.keys() for info in seen)


def _runtime(tmp_path: Path, checks: list[int]) -> runtime.NodeRuntime:
    def is_interrupted() -> bool:
        checks.append(1)
        return len(checks) > 1  # interrupted from the second check on

    return runtime.NodeRuntime(execution_id="e", node_id="3", class_type="KSampler", prompt={}, extra_pnginfo={},
                               input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path,
                               is_interrupted=is_interrupted)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_interrupt_stops_at_the_next_step(name: str, tmp_path: Path) -> None:
    checks: list[int] = []
    model = GaussianModel(0.0, 1.0)
    token = runtime.bind(_runtime(tmp_path, checks))
    try:
        with pytest.raises(runtime.ExecutionInterrupted):
            run(name, model, torch.randn(1, 4, 2, 2), sigmas=torch.tensor([5.0, 2.0, 1.0, 0.0]))
    finally:
        runtime.unbind(token)
    assert len(checks) == 2
    assert model.calls == (2 if name.startswith("dpm_2") else 1 if name != "heun" else 2)


def test_lcm_renoises_with_the_model_sampling() -> None:
    class Model(GaussianModel):
        model_sampling = ModelSamplingDiscrete()

    sigmas = torch.tensor([4.0, 1.0, 0.0])
    x = torch.randn(1, 4, 2, 2, generator=torch.manual_seed(1))
    out = samplers.sample_lcm(Model(0.5, 0.0), x, sigmas, extra_args={"seed": 3})
    torch.testing.assert_close(out, torch.full_like(out, 0.5))
    one_step = samplers.sample_lcm(Model(0.5, 0.0), x, sigmas[:2], extra_args={"seed": 3})
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(one_step, 0.5 + noise * 1.0)
