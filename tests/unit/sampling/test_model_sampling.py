"""The sigma table and the prediction-type conversions, against the DDPM/k-diffusion formulas computed in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_executor.diffusion.sampling.model_sampling import (
    ModelSamplingDiscrete,
    ModelSamplingDiscreteDistilled,
    is_max_denoise,
)

pytestmark = pytest.mark.unit


def numpy_sigmas() -> np.ndarray:
    # SD's "scaled_linear" betas: linear in sqrt(beta) from 0.00085 to 0.012 over 1000 steps.
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def test_sigma_table_matches_the_ddpm_schedule(ms: ModelSamplingDiscrete) -> None:
    expected = numpy_sigmas()
    assert ms.sigmas.dtype == torch.float32 and ms.sigmas.shape == (1000,)
    np.testing.assert_array_equal(ms.sigmas.numpy(), expected.astype(np.float32))
    np.testing.assert_array_equal(ms.log_sigmas.numpy(), np.log(expected).astype(np.float32))
    assert float(ms.sigma_min) == pytest.approx(0.0291672, abs=1e-6)
    assert float(ms.sigma_max) == pytest.approx(14.6146, abs=1e-4)


def test_timestep_is_the_nearest_table_index_in_log_space(ms: ModelSamplingDiscrete) -> None:
    table = numpy_sigmas()
    assert ms.timestep(ms.sigmas).tolist() == list(range(1000))
    probes = np.array([0.03, 0.5, 1.0, 3.3, 14.0, 20.0])
    expected = [int(np.argmin(np.abs(np.log(p) - np.log(table)))) for p in probes]
    got = ms.timestep(torch.tensor(probes, dtype=torch.float32))
    assert got.dtype == torch.int64 and got.tolist() == expected


def test_sigma_interpolates_log_sigma_between_timesteps(ms: ModelSamplingDiscrete) -> None:
    log_table = np.log(numpy_sigmas())
    for t in (0.0, 1.0, 499.5, 731.25, 999.0):
        lo, hi = int(np.floor(t)), int(np.ceil(t))
        w = t - lo
        expected = np.exp((1 - w) * log_table[lo] + w * log_table[hi])
        assert float(ms.sigma(torch.tensor(t))) == pytest.approx(expected, rel=2e-6)
    assert float(ms.sigma(torch.tensor(-5.0))) == pytest.approx(float(ms.sigmas[0]), rel=1e-6)  # clamped
    assert float(ms.sigma(torch.tensor(2000.0))) == pytest.approx(float(ms.sigmas[-1]), rel=1e-6)


def test_percent_to_sigma(ms: ModelSamplingDiscrete) -> None:
    assert ms.percent_to_sigma(0.0) == 999999999.9
    assert ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(float(ms.sigma(torch.tensor(499.5))), rel=1e-6)
    assert ms.percent_to_sigma(0.25) > ms.percent_to_sigma(0.5) > ms.percent_to_sigma(0.75)


def test_eps_prediction_round_trip(ms: ModelSamplingDiscrete) -> None:
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([0.5, 7.0])
    x = x0 + eps * sigma.view(-1, 1, 1, 1)
    x_in = ms.calculate_input(sigma, x)
    torch.testing.assert_close(x_in, x / torch.sqrt(sigma ** 2 + 1).view(-1, 1, 1, 1))
    torch.testing.assert_close(ms.calculate_denoised(sigma, eps, x), x0, rtol=1e-5, atol=1e-5)


def test_v_prediction_recovers_x0_from_diffusers_v() -> None:
    ms = ModelSamplingDiscrete("v_prediction")
    torch.manual_seed(1)
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([0.3, 9.0]).view(-1, 1, 1, 1)
    alpha_t, sigma_t = 1 / torch.sqrt(1 + sigma ** 2), sigma / torch.sqrt(1 + sigma ** 2)  # VP coefficients
    v = alpha_t * eps - sigma_t * x0
    x = x0 + sigma * eps  # the VE latent the sampler carries
    torch.testing.assert_close(ms.calculate_denoised(sigma.flatten(), v, x), x0, rtol=1e-5, atol=1e-5)


def test_noise_scaling(ms: ModelSamplingDiscrete) -> None:
    noise, latent = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    sigma = torch.tensor(3.0)
    torch.testing.assert_close(ms.noise_scaling(sigma, noise, latent), latent + noise * 3.0)
    torch.testing.assert_close(ms.noise_scaling(sigma, noise, latent, max_denoise=True),
                               latent + noise * (1 + 9.0) ** 0.5)
    assert ms.inverse_noise_scaling(sigma, latent) is latent
    assert is_max_denoise(ms, ms.sigma_max.view(1)) and not is_max_denoise(ms, torch.tensor([10.0]))


def test_lcm_schedule_keeps_every_20th_sigma() -> None:
    base = ModelSamplingDiscrete()
    lcm = ModelSamplingDiscreteDistilled()
    assert lcm.sigmas.shape == (50,)
    torch.testing.assert_close(lcm.sigmas, base.sigmas[19::20])
    assert lcm.timestep(lcm.sigmas).tolist() == list(range(19, 1000, 20))
    torch.testing.assert_close(lcm.sigma(torch.tensor(999.0)), lcm.sigmas[-1])
    # LCM's boundary condition: c_skip = 0.25 / ((10 t)² + 0.25), c_out = 10 t / sqrt((10 t)² + 0.25).
    x, out = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    sigma = lcm.sigmas[10:11]
    t = 10 * (10 * 20 + 19)
    c_skip, c_out = 0.25 / (t ** 2 + 0.25), t / (t ** 2 + 0.25) ** 0.5
    expected = c_out * (x - out * sigma) + c_skip * x
    torch.testing.assert_close(lcm.calculate_denoised(sigma, out, x), expected)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="prediction"):
        ModelSamplingDiscrete("x0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule"):
        ModelSamplingDiscrete(beta_schedule="cosine")  # type: ignore[arg-type]
