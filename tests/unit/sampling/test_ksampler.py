"""KSampler / KSamplerAdvanced semantics around a fake UNet: sigmas, noise, CFG, batching, masks, interrupts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from gpu_executor.diffusion.sampling.conditioning import process_conds
from gpu_executor.diffusion.sampling.ksampler import (
    SD15_LATENT_FORMAT,
    CFGDenoiser,
    compute_sigmas,
    sample,
    slice_sigmas,
)
from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from gpu_executor.diffusion.sampling.noise import prepare_noise
from gpu_executor.diffusion.sampling.schedulers import calculate_sigmas
from gpu_executor.engine import runtime
from tests.unit.sampling.conftest import GaussianUNet, entry

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")]


class ConstantUNet:
    """Returns, for each chunk of rows, the value its conditioning tensor is filled with (as eps)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, list[Any]]] = []

    def __call__(self, x_in: Tensor, timestep: Tensor, conds: list[Any]) -> Tensor:
        self.calls.append((x_in, timestep, conds))
        rows = x_in.shape[0] // len(conds)
        values = torch.tensor([float(c[0].flatten()[0]) for c in conds]).repeat_interleave(rows)
        return torch.ones_like(x_in) * values.view(-1, 1, 1, 1)


def kwargs(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"seed": 1, "steps": 10, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                            "positive": [entry(0.0)], "negative": [entry(0.0)]}
    return {**base, **overrides}


# -- sigmas --------------------------------------------------------------------------------------------------


def test_denoise_keeps_the_tail_of_a_longer_schedule(ms: ModelSamplingDiscrete) -> None:
    torch.testing.assert_close(compute_sigmas(ms, 10, "euler", "karras", 0.5), calculate_sigmas(ms, "karras", 20)[-11:])
    torch.testing.assert_close(compute_sigmas(ms, 10, "euler", "normal", 0.3),
                               calculate_sigmas(ms, "normal", 33)[-11:])
    torch.testing.assert_close(compute_sigmas(ms, 10, "euler", "normal", 1.0), calculate_sigmas(ms, "normal", 10))
    assert compute_sigmas(ms, 10, "euler", "normal", 0.0).numel() == 0


def test_dpm_2_drops_the_penultimate_sigma(ms: ModelSamplingDiscrete) -> None:
    full = calculate_sigmas(ms, "karras", 11)
    got = compute_sigmas(ms, 10, "dpm_2", "karras")
    assert len(got) == 11
    torch.testing.assert_close(got, torch.cat([full[:-2], full[-1:]]))


def test_start_and_last_step_slicing() -> None:
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])
    assert slice_sigmas(sigmas, None, None).tolist() == sigmas.tolist()  # type: ignore[union-attr]
    assert slice_sigmas(sigmas, 2, None).tolist() == [2.0, 1.0, 0.5, 0.0]  # type: ignore[union-attr]
    assert slice_sigmas(sigmas, None, 3).tolist() == [10.0, 5.0, 2.0, 1.0]  # type: ignore[union-attr]
    assert slice_sigmas(sigmas, 1, 3, force_full_denoise=True).tolist() == [5.0, 2.0, 0.0]  # type: ignore[union-attr]
    assert slice_sigmas(sigmas, None, 10, force_full_denoise=True).tolist() == sigmas.tolist()  # type: ignore[union-attr]
    assert slice_sigmas(sigmas, 5, None) is None
    assert sigmas[3] == 1.0  # the caller's tensor is not modified


def test_start_step_past_the_end_returns_the_latent_untouched(ms: ModelSamplingDiscrete) -> None:
    unet = ConstantUNet()
    latent = torch.randn(1, 4, 4, 4)
    assert sample(unet, ms, None, latent, **kwargs(start_step=10)) is latent
    assert sample(unet, ms, None, latent, **kwargs(denoise=0.0)) is latent
    assert unet.calls == []


def test_advanced_split_sampling_equals_one_run(ms: ModelSamplingDiscrete) -> None:
    """KSamplerAdvanced 0→4 with leftover noise, then 4→10 without adding noise, is the same as 0→10."""
    latent = torch.zeros(1, 4, 8, 8)
    noise = prepare_noise(latent, 3)
    unet = GaussianUNet(ms, mu=0.4, s=0.5)
    whole = sample(unet, ms, noise, latent, **kwargs())
    first = sample(unet, ms, noise, latent, **kwargs(last_step=4))
    second = sample(unet, ms, None, first, **kwargs(start_step=4, disable_noise=True, seed=99))
    torch.testing.assert_close(second, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, whole, atol=1e-2)


def test_force_full_denoise_ends_at_sigma_zero(ms: ModelSamplingDiscrete) -> None:
    latent = torch.zeros(1, 4, 8, 8)
    unet = GaussianUNet(ms, mu=0.4, s=0.0)
    leftover = sample(unet, ms, None, latent, **kwargs(last_step=5))
    full = sample(unet, ms, None, latent, **kwargs(last_step=5, force_full_denoise=True))
    torch.testing.assert_close(full, torch.full_like(full, 0.4), rtol=0, atol=1e-5)
    assert float((leftover - 0.4).abs().max()) > 0.1  # still noisy


# -- noise -----------------------------------------------------------------------------------------------------


def test_noise_defaults_to_prepare_noise_and_disable_noise_uses_zeros(ms: ModelSamplingDiscrete) -> None:
    latent = torch.zeros(1, 4, 4, 4)
    first: list[Tensor] = []
    sample(ConstantUNet(), ms, None, latent, **kwargs(steps=1, callback=lambda i: first.append(i["x"])))
    torch.testing.assert_close(first[0], prepare_noise(latent, 1) * math.sqrt(1 + float(ms.sigma_max) ** 2))
    first.clear()
    base = torch.randn(1, 4, 4, 4)
    sample(ConstantUNet(), ms, None, base, **kwargs(steps=10, start_step=5, disable_noise=True,
                                                     callback=lambda i: first.append(i["x"])))
    assert torch.equal(first[0], base)


# -- CFG and batching ---------------------------------------------------------------------------------------


def test_cfg_combines_denoised_predictions_in_one_batched_call(ms: ModelSamplingDiscrete) -> None:
    unet = ConstantUNet()
    positive, negative = [entry(2.0)], [entry(-1.0)]
    conds = process_conds({"positive": positive, "negative": negative}, ms, (2, 4, 4, 4), "cpu")
    guider = CFGDenoiser(unet, ms, conds["positive"], conds["negative"], cfg=7.5)
    x, sigma = torch.randn(2, 4, 4, 4), torch.tensor([3.0, 3.0])
    out = guider(x, sigma)
    cond, uncond = x - 2.0 * 3.0, x - (-1.0) * 3.0  # eps prediction: denoised = x - eps * sigma
    torch.testing.assert_close(out, uncond + (cond - uncond) * 7.5)
    assert len(unet.calls) == 1
    x_in, timestep, entries = unet.calls[0]
    assert entries == [negative[0], positive[0]]  # ComfyUI's order: the uncond rows first
    assert x_in.shape == (4, 4, 4, 4)
    torch.testing.assert_close(x_in, torch.cat([x, x]) / math.sqrt(10.0))
    assert timestep.dtype == torch.float32 and timestep.tolist() == [float(ms.timestep(torch.tensor(3.0)))] * 4


def test_cfg_one_skips_the_negative(ms: ModelSamplingDiscrete) -> None:
    unet = ConstantUNet()
    out = sample(unet, ms, None, torch.zeros(1, 4, 4, 4), **kwargs(steps=3, positive=[entry(0.5)],
                                                                   negative=[entry(9.0)]))
    assert len(unet.calls) == 3 and all(len(conds) == 1 and conds[0][0][0, 0, 0] == 0.5 for _, _, conds in unet.calls)
    assert out.shape == (1, 4, 4, 4)


def test_incompatible_entries_run_in_separate_calls(ms: ModelSamplingDiscrete) -> None:
    unet = ConstantUNet()
    sample(unet, ms, None, torch.zeros(1, 4, 4, 4), **kwargs(steps=1, cfg=3.0, positive=[entry(1.0, tokens=77)],
                                                             negative=[entry(2.0, tokens=77 * 5)]))
    assert [len(conds) for _, _, conds in unet.calls] == [1, 1]  # 385 tokens: lcm padding over 4x
    unet = ConstantUNet()
    sample(unet, ms, None, torch.zeros(1, 4, 4, 4), **kwargs(steps=1, cfg=3.0, positive=[entry(1.0, tokens=77)],
                                                             negative=[entry(2.0, tokens=154)]))
    assert [len(conds) for _, _, conds in unet.calls] == [2]


def test_max_batch_splits_the_call(ms: ModelSamplingDiscrete) -> None:
    unet = ConstantUNet()
    sample(unet, ms, None, torch.zeros(2, 4, 4, 4), **kwargs(steps=1, cfg=3.0, max_batch=2))
    assert [x.shape[0] for x, _, _ in unet.calls] == [2, 2]


# -- end to end on Gaussian data -----------------------------------------------------------------------------


@pytest.mark.parametrize("v_prediction", [False, True])
@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "lcm", "ddim"])
def test_sampling_reaches_the_data(ms: ModelSamplingDiscrete, v_prediction: bool, sampler_name: str) -> None:
    model_sampling = ModelSamplingDiscrete("v_prediction") if v_prediction else ms
    unet = GaussianUNet(model_sampling, mu=0.6, s=0.0, v_prediction=v_prediction)
    out = sample(unet, model_sampling, None, torch.zeros(1, 4, 8, 8),
                 **kwargs(steps=20, cfg=5.0, sampler_name=sampler_name))
    torch.testing.assert_close(out, torch.full_like(out, 0.6), rtol=0, atol=1e-4)


def test_same_seed_reproduces_and_seed_changes_the_image(ms: ModelSamplingDiscrete) -> None:
    unet = GaussianUNet(ms, mu=0.0, s=0.5)
    latent = torch.zeros(1, 4, 8, 8)
    a = sample(unet, ms, None, latent, **kwargs(sampler_name="euler_ancestral", seed=5))
    b = sample(unet, ms, None, latent, **kwargs(sampler_name="euler_ancestral", seed=5))
    c = sample(unet, ms, None, latent, **kwargs(sampler_name="euler_ancestral", seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_latent_format_scales_in_and_out(ms: ModelSamplingDiscrete) -> None:
    unet = GaussianUNet(ms, mu=0.6, s=0.0)
    out = sample(unet, ms, None, torch.zeros(1, 4, 4, 4), **kwargs(latent_format=SD15_LATENT_FORMAT))
    torch.testing.assert_close(out, torch.full_like(out, 0.6 / 0.18215), rtol=1e-5, atol=1e-4)
    # img2img: the input latent is scaled into the model's space (denoise 0.5 keeps it near the input)
    seen: list[Tensor] = []
    latent = torch.full((1, 4, 4, 4), 2.0)
    sample(GaussianUNet(ms, mu=0.0, s=10.0), ms, torch.zeros(1, 4, 4, 4), latent,
           **kwargs(denoise=0.5, latent_format=SD15_LATENT_FORMAT, callback=lambda i: seen.append(i["x"])))
    torch.testing.assert_close(seen[0], latent * 0.18215)


def test_noise_mask_keeps_the_unmasked_latent(ms: ModelSamplingDiscrete) -> None:
    latent = torch.randn(1, 4, 8, 8, generator=torch.manual_seed(2))
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1.0
    for sampler_name in ("euler", "ddim", "dpmpp_2m"):
        out = sample(GaussianUNet(ms, mu=0.6, s=0.0), ms, None, latent,
                     **kwargs(sampler_name=sampler_name, noise_mask=mask))
        torch.testing.assert_close(out[..., :4], latent[..., :4], rtol=0, atol=1e-5)
        torch.testing.assert_close(out[..., 4:], torch.full_like(out[..., 4:], 0.6), rtol=0, atol=1e-4)


def test_ddim_reference_noise_comes_from_seed_plus_one(ms: ModelSamplingDiscrete) -> None:
    """ddim is euler whose inpainting reference latent is re-noised with noise drawn from seed + 1."""
    latent = torch.zeros(1, 4, 4, 4)
    mask = torch.zeros(4, 4)
    seen: list[Tensor] = []

    class Recorder(GaussianUNet):
        def __call__(self, x_in: Tensor, timestep: Tensor, conds: list[Any]) -> Tensor:
            seen.append(x_in.clone())
            return super().__call__(x_in, timestep, conds)

    sample(Recorder(ms, 0.0, 1.0), ms, None, latent, **kwargs(sampler_name="ddim", noise_mask=mask, steps=2, seed=4))
    sigma = float(ms.sigma_max)
    ref = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(5)) * sigma / math.sqrt(sigma ** 2 + 1)
    torch.testing.assert_close(seen[0], ref)


def test_interrupt_raises_at_the_next_step(ms: ModelSamplingDiscrete, tmp_path: Path) -> None:
    checks: list[int] = []

    def is_interrupted() -> bool:
        checks.append(1)
        return len(checks) > 1

    unet = ConstantUNet()
    token = runtime.bind(runtime.NodeRuntime(execution_id="e", node_id="3", class_type="KSampler", prompt={},
                                             extra_pnginfo={}, input_dir=tmp_path, output_dir=tmp_path,
                                             temp_dir=tmp_path, is_interrupted=is_interrupted))
    try:
        with pytest.raises(runtime.ExecutionInterrupted):
            sample(unet, ms, None, torch.zeros(1, 4, 4, 4), **kwargs(steps=20))
    finally:
        runtime.unbind(token)
    assert len(unet.calls) == 1


def test_unknown_sampler_or_scheduler(ms: ModelSamplingDiscrete) -> None:
    with pytest.raises(ValueError, match="sampler"):
        sample(ConstantUNet(), ms, None, torch.zeros(1, 4, 4, 4), **kwargs(sampler_name="nope"))
    with pytest.raises(ValueError, match="scheduler"):
        sample(ConstantUNet(), ms, None, torch.zeros(1, 4, 4, 4), **kwargs(scheduler="nope"))
