"""Area, mask, strength, timestep-range and default conditioning combined as ComfyUI combines them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from gpu_executor.diffusion.sampling.conditioning import (
    Cond,
    calc_cond_batch,
    pad_cross_attention,
    process_conds,
)
from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from tests.unit.sampling.conftest import entry

pytestmark = pytest.mark.unit

SHAPE = (1, 4, 32, 32)


class ValueModel:
    """model_fn returning, per chunk, a constant 'denoised' equal to the entry's tensor value."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], list[Any]]] = []

    def __call__(self, input_x: Tensor, sigma: Tensor, entries: list[Any]) -> Tensor:
        self.calls.append((tuple(input_x.shape), entries))
        rows = input_x.shape[0] // len(entries)
        values = torch.tensor([float(e[0].flatten()[0]) for e in entries]).repeat_interleave(rows)
        return torch.ones_like(input_x) * values.view(-1, 1, 1, 1)


def resolved(ms: ModelSamplingDiscrete, positive: list[Any], negative: list[Any] | None = None,
             ) -> dict[str, list[Cond]]:
    return process_conds({"positive": positive, "negative": negative or [entry(0.0)]}, ms, SHAPE, "cpu")


def fade(n: int, start_faded: bool, end_faded: bool) -> np.ndarray:
    """ComfyUI's area edge: rr = min(8, n // 4) pixels ramping (t + 1) / rr on each side not at the border."""
    w = np.ones(n)
    rr = min(8, n // 4)
    for t in range(rr):
        if start_faded:
            w[t] *= (t + 1) / rr
        if end_faded:
            w[n - 1 - t] *= (t + 1) / rr
    return w


def test_area_entry_is_blended_with_faded_edges(ms: ModelSamplingDiscrete) -> None:
    # ConditioningSetArea(width=128, height=128, x=128, y=0) on a 256x256 image: latent area (16, 16, 0, 16)
    conds = resolved(ms, [entry(1.0), entry(3.0, area=(16, 16, 0, 16), strength=2.0)])
    model = ValueModel()
    x = torch.zeros(SHAPE)
    out, _ = calc_cond_batch(model, [conds["positive"], None], x, torch.tensor([5.0]))
    weight = np.zeros((32, 32))
    weight[0:16, 16:32] = 2.0 * np.outer(fade(16, False, True), fade(16, True, False))
    expected = (1.0 * 1.0 + 3.0 * weight) / (1.0 + weight)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, rtol=1e-6)
    assert sorted(shape for shape, _ in model.calls) == [(1, 4, 16, 16), (1, 4, 32, 32)]  # different shapes: 2 calls


def test_percentage_area_and_area_clipping(ms: ModelSamplingDiscrete) -> None:
    conds = resolved(ms, [entry(1.0, area=("percentage", 0.5, 0.25, 0.5, 0.75))])
    assert conds["positive"][0].options["area"] == (16, 8, 16, 24)
    model = ValueModel()
    overhanging = resolved(ms, [entry(2.0, area=(40, 40, 24, 24))])["positive"]
    out, _ = calc_cond_batch(model, [overhanging, None], torch.zeros(SHAPE), torch.tensor([1.0]))
    assert model.calls[0][0] == (1, 4, 8, 8)  # clipped to the latent
    assert float(out[0, 0, 31, 31]) == pytest.approx(2.0) and float(out[0, 0, 0, 0]) == 0.0


def test_mask_weights_with_mask_strength(ms: ModelSamplingDiscrete) -> None:
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # right half, at twice the latent resolution: resized bilinearly
    conds = resolved(ms, [entry(1.0), entry(5.0, mask=mask, mask_strength=0.5, set_area_to_bounds=False)])
    out, _ = calc_cond_batch(ValueModel(), [conds["positive"], None], torch.zeros(SHAPE), torch.tensor([1.0]))
    resized = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(32, 32), mode="bilinear")[0, 0].numpy()
    w = 0.5 * resized
    np.testing.assert_allclose(out[0, 2].numpy(), (1.0 + 5.0 * w) / (1.0 + w), rtol=1e-6)


def test_mask_bounds_become_the_area(ms: ModelSamplingDiscrete) -> None:
    mask = torch.zeros(32, 32)
    mask[4:10, 20:30] = 1.0
    cond = resolved(ms, [entry(1.0, mask=mask, set_area_to_bounds=True)])["positive"][0]
    assert cond.options["area"] == (8, 10, 4, 20)  # height raised to the minimum of 8
    empty = resolved(ms, [entry(1.0, mask=torch.zeros(32, 32), set_area_to_bounds=True)])["positive"][0]
    assert empty.options["area"] == (8, 8, 0, 0)


def test_every_area_gets_a_negative_counterpart(ms: ModelSamplingDiscrete) -> None:
    negative = [entry(-1.0, pooled_output=torch.ones(1, 4))]
    conds = resolved(ms, [entry(1.0), entry(3.0, area=(16, 16, 0, 16), strength=0.5)], negative)
    assert len(conds["negative"]) == 2
    added = conds["negative"][1]
    assert added.tensor is negative[0][0]  # the negative's prompt...
    assert added.options["area"] == (16, 16, 0, 16) and added.options["strength"] == 0.5  # ...over the area
    assert added.options["pooled_output"] is negative[0][1]["pooled_output"]
    assert len(conds["positive"]) == 2  # the counterpart's area already exists in the positive list


def test_timestep_range_switches_an_entry_off(ms: ModelSamplingDiscrete) -> None:
    conds = resolved(ms, [entry(1.0), entry(3.0, start_percent=0.5, end_percent=1.0)])
    boundary = ms.percent_to_sigma(0.5)
    early, _ = calc_cond_batch(ValueModel(), [conds["positive"], None], torch.zeros(SHAPE),
                               torch.tensor([boundary * 2]))
    late, _ = calc_cond_batch(ValueModel(), [conds["positive"], None], torch.zeros(SHAPE),
                              torch.tensor([boundary / 2]))
    assert float(early.mean()) == pytest.approx(1.0) and float(late.mean()) == pytest.approx(2.0)


def test_default_entry_fills_only_the_uncovered_part(ms: ModelSamplingDiscrete) -> None:
    conds = resolved(ms, [entry(3.0, area=(32, 16, 0, 0)), entry(7.0, default=True)])
    out, _ = calc_cond_batch(ValueModel(), [conds["positive"], None], torch.zeros(SHAPE), torch.tensor([1.0]))
    assert float(out[0, 0, 5, 30]) == pytest.approx(7.0)
    assert float(out[0, 0, 5, 2]) == pytest.approx(3.0)


def test_entries_batch_in_comfyui_order(ms: ModelSamplingDiscrete) -> None:
    positive, negative = [entry(1.0), entry(2.0)], [entry(3.0)]
    conds = resolved(ms, positive, negative)
    model = ValueModel()
    cond, uncond = calc_cond_batch(model, [conds["positive"], conds["negative"]], torch.zeros(SHAPE),
                                   torch.tensor([1.0]))
    assert len(model.calls) == 1
    assert model.calls[0][1] == [negative[0], positive[1], positive[0]]  # compatible entries popped last first
    assert float(cond.mean()) == pytest.approx(1.5) and float(uncond.mean()) == pytest.approx(3.0)


def test_controlnet_of_the_positive_is_copied_to_the_negative(ms: ModelSamplingDiscrete) -> None:
    control = object()
    conds = resolved(ms, [entry(1.0, control=control, control_apply_to_uncond=True)], [entry(0.0)])
    assert conds["negative"][0].options["control"] is control
    assert conds["negative"][0].entry[1]["control"] is control
    other = resolved(ms, [entry(1.0, control=control)], [entry(0.0)])  # ControlNetApplyAdvanced sets both itself
    assert "control" not in other["negative"][0].options


def test_pad_cross_attention_repeats_to_the_common_length() -> None:
    a, b = torch.randn(1, 77, 8), torch.randn(1, 154, 8)
    out = pad_cross_attention([a, b])
    assert out.shape == (2, 154, 8)
    assert torch.equal(out[0], torch.cat([a[0], a[0]])) and torch.equal(out[1], b[0])
