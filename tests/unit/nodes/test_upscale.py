"""common_upscale details: folding of extra dims, single-channel Lanczos, dtype and device handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from gpu_executor.imaging import center_crop_box, common_upscale

pytestmark = pytest.mark.unit


def test_five_dimensional_samples_are_resized_per_frame() -> None:
    video = torch.rand((2, 3, 4, 5, 6), generator=torch.Generator().manual_seed(0))  # [B,C,T,H,W]
    out = common_upscale(video, 9, 7, "bilinear", "disabled")
    assert out.shape == (2, 3, 4, 7, 9)
    for t in range(4):
        assert torch.equal(out[:, :, t], F.interpolate(video[:, :, t], size=(7, 9), mode="bilinear"))


def test_lanczos_single_channel_keeps_the_channel_dim() -> None:
    grey = torch.rand((2, 1, 5, 6), generator=torch.Generator().manual_seed(1))
    out = common_upscale(grey, 3, 4, "lanczos", "disabled")
    assert out.shape == (2, 1, 4, 3) and out.dtype == torch.float32
    for index in range(2):
        as_bytes = np.clip(grey[index, 0].numpy() * 255.0, 0, 255).astype(np.uint8)
        expected = np.asarray(Image.fromarray(as_bytes).resize((3, 4), Image.Resampling.LANCZOS)) / np.float32(255)
        np.testing.assert_array_equal(out[index, 0].numpy(), expected.astype(np.float32))


def test_lanczos_quantises_to_8_bits_and_clips() -> None:
    samples = torch.tensor([[[[1.7, -0.3], [0.5, 0.5]]]]).repeat(1, 3, 1, 1)
    out = common_upscale(samples, 2, 2, "lanczos", "disabled")  # same size: only the 8-bit round trip
    assert out[0, 0].tolist() == [[1.0, 0.0], [np.float32(127) / np.float32(255)] * 2]


def test_bislerp_keeps_the_dtype() -> None:
    half = torch.rand((1, 4, 3, 3), generator=torch.Generator().manual_seed(2)).to(torch.float16)
    out = common_upscale(half, 5, 5, "bislerp", "disabled")
    assert out.dtype == torch.float16 and out.shape == (1, 4, 5, 5)


@pytest.mark.parametrize(
    ("old", "new", "margins"),
    [((8, 4), (4, 4), (2, 0)), ((4, 8), (4, 4), (0, 2)), ((30, 10), (8, 8), (10, 0)), ((5, 5), (10, 10), (0, 0))],
)
def test_center_crop_margins(old: tuple[int, int], new: tuple[int, int], margins: tuple[int, int]) -> None:
    assert center_crop_box(*old, *new) == margins
