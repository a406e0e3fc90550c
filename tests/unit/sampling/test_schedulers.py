"""Every scheduler against its definition, computed independently in numpy from the sigma table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats  # type: ignore[import-untyped]
import torch

from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from gpu_executor.diffusion.sampling.schedulers import SCHEDULER_NAMES, calculate_sigmas

pytestmark = pytest.mark.unit

# KSampler's scheduler combo as recorded from ComfyUI's object_info.
COMFY_SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                    "linear_quadratic", "kl_optimal"]


@pytest.fixture(scope="module")
def table(ms: ModelSamplingDiscrete) -> np.ndarray:
    values: np.ndarray = np.array(ms.sigmas.double().tolist(), dtype=np.float64)
    return values


def interp_sigma(table: np.ndarray, t: np.ndarray) -> np.ndarray:
    log = np.log(table)
    lo, hi = np.floor(t).astype(int), np.ceil(t).astype(int)
    w = t - lo
    result: np.ndarray = np.exp((1 - w) * log[lo] + w * log[hi])
    return result


def check(got: torch.Tensor, expected: np.ndarray, rtol: float = 1e-5) -> None:
    assert got.dtype == torch.float32
    assert got.shape == (len(expected),)
    assert float(got[-1]) == 0.0 and expected[-1] == 0.0
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=rtol, atol=1e-7)
    assert np.all(np.diff(got.numpy()) < 0)


def test_names_in_comfyui_order() -> None:
    assert SCHEDULER_NAMES == COMFY_SCHEDULERS


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_simple(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    idx = [999 - int(x * (1000 / steps)) for x in range(steps)]
    check(calculate_sigmas(ms, "simple", steps), np.append(table[idx], 0.0), rtol=0)


@pytest.mark.parametrize("steps", [2, 10, 25])
def test_normal_includes_the_last_timestep(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    expected = interp_sigma(table, np.linspace(999, 0, steps))
    got = calculate_sigmas(ms, "normal", steps)
    check(got, np.append(expected, 0.0))
    assert float(got[-2]) == pytest.approx(table[0])  # sigma_min is the last nonzero sigma


@pytest.mark.parametrize("steps", [2, 10, 25])
def test_sgm_uniform_drops_the_last_timestep(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    expected = interp_sigma(table, np.linspace(999, 0, steps + 1)[:-1])
    check(calculate_sigmas(ms, "sgm_uniform", steps), np.append(expected, 0.0))


@pytest.mark.parametrize("steps", [1, 10, 30])
def test_karras(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    # Karras et al. (2022), eq. 5 with rho = 7 between the model's sigma_min and sigma_max.
    rho, smin, smax = 7.0, table[0], table[-1]
    i = np.arange(steps)
    ramp = i / (steps - 1) if steps > 1 else np.zeros(1)
    expected = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    got = calculate_sigmas(ms, "karras", steps)
    if steps == 1:
        assert got.tolist() == pytest.approx([smax, 0.0], rel=1e-5)
    else:
        check(got, np.append(expected, 0.0))
        assert float(got[0]) == pytest.approx(14.6146, abs=1e-4) and float(got[-2]) == pytest.approx(0.0291672)


@pytest.mark.parametrize("steps", [2, 10, 30])
def test_exponential(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    expected = np.exp(np.linspace(np.log(table[-1]), np.log(table[0]), steps))
    check(calculate_sigmas(ms, "exponential", steps), np.append(expected, 0.0))


@pytest.mark.parametrize(("steps", "count"), [(10, 10), (20, 20), (7, 8), (3, 3)])
def test_ddim_uniform_strides_the_table_from_index_1(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int,
                                                     count: int) -> None:
    idx = list(range(1, 1000, 1000 // steps))[::-1]
    assert len(idx) == count  # a step count that does not divide 1000 gives extra steps, as in ComfyUI
    check(calculate_sigmas(ms, "ddim_uniform", steps), np.append(table[idx], 0.0), rtol=0)


@pytest.mark.parametrize("steps", [5, 20])
def test_beta(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    quantiles = scipy.stats.beta.ppf(1 - np.arange(steps) / steps, 0.6, 0.6)
    ts = np.rint(quantiles * 999).astype(int)
    ts = [t for k, t in enumerate(ts) if k == 0 or t != ts[k - 1]]
    check(calculate_sigmas(ms, "beta", steps), np.append(table[ts], 0.0), rtol=0)


@pytest.mark.parametrize("steps", [2, 9, 20])
def test_linear_quadratic(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    # Mochi's schedule: 1 - sigma/sigma_max rises linearly to 0.025 over steps // 2 steps, then quadratically to 1.
    n_lin, thr = steps // 2, 0.025
    lin = [i * thr / n_lin for i in range(n_lin)]
    n_quad = steps - n_lin
    diff = n_lin - thr * steps
    a = diff / (n_lin * n_quad ** 2)
    b = thr / n_lin - 2 * diff / n_quad ** 2
    c = a * n_lin ** 2
    quad = [a * i * i + b * i + c for i in range(n_lin, steps)]
    expected = (1.0 - np.array([*lin, *quad, 1.0])) * table[-1]
    check(calculate_sigmas(ms, "linear_quadratic", steps), expected)
    # the quadratic part joins the linear part continuously at thr
    assert a * n_lin ** 2 + b * n_lin + c == pytest.approx(thr)


@pytest.mark.parametrize("steps", [2, 10, 30])
def test_kl_optimal(ms: ModelSamplingDiscrete, table: np.ndarray, steps: int) -> None:
    expected = np.tan(np.linspace(math.atan(table[-1]), math.atan(table[0]), steps))
    check(calculate_sigmas(ms, "kl_optimal", steps), np.append(expected, 0.0))


def test_unknown_scheduler(ms: ModelSamplingDiscrete) -> None:
    with pytest.raises(ValueError, match="scheduler"):
        calculate_sigmas(ms, "cosine", 10)
