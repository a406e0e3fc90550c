"""LATENT nodes: shapes, batch bookkeeping (noise_mask, batch_index) and placement, checked by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from gpu_executor.nodes.latents import (
    EmptyLatentImage,
    LatentComposite,
    LatentFromBatch,
    LatentUpscale,
    LatentUpscaleBy,
    RepeatLatentBatch,
)

pytestmark = pytest.mark.unit


def numbered(batch: int, height: int = 2, width: int = 2, channels: int = 4) -> torch.Tensor:
    """Samples whose every value tells its batch position (b + 0.1·c + small spatial offsets)."""
    b = torch.arange(batch, dtype=torch.float32).reshape(-1, 1, 1, 1)
    c = torch.arange(channels, dtype=torch.float32).reshape(1, -1, 1, 1) * 0.1
    s = torch.arange(height * width, dtype=torch.float32).reshape(1, 1, height, width) * 0.001
    return b + c + s


def test_empty_latent_image() -> None:
    (latent,) = EmptyLatentImage().generate(width=520, height=64, batch_size=3)
    assert set(latent) == {"samples"}
    assert torch.equal(latent["samples"], torch.zeros((3, 4, 8, 65)))


# --- upscaling --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_latent_upscale_sizes_are_pixels_over_eight(method: str) -> None:
    samples = numbered(2, 8, 8)
    (out,) = LatentUpscale().upscale({"samples": samples, "batch_index": [4, 5]}, method, 128, 96, "disabled")
    assert out["batch_index"] == [4, 5]  # other keys are kept
    expected = F.interpolate(samples, size=(12, 16), mode=method)
    assert torch.equal(out["samples"], expected)


def test_latent_upscale_minimum_and_zero_sides() -> None:
    samples = numbered(1, 8, 16)  # 128×64 pixels
    (out,) = LatentUpscale().upscale({"samples": samples}, "nearest-exact", 8, 8, "disabled")
    assert out["samples"].shape == (1, 4, 8, 8)  # at least 64 pixels per side
    (out,) = LatentUpscale().upscale({"samples": samples}, "nearest-exact", 0, 128, "disabled")
    assert out["samples"].shape == (1, 4, 16, 32)  # width from the aspect ratio: 16·128/8 = 256 px
    latent = {"samples": samples}
    (out,) = LatentUpscale().upscale(latent, "nearest-exact", 0, 0, "disabled")
    assert out is latent


def test_latent_upscale_center_crop() -> None:
    samples = numbered(1, 8, 16)
    (out,) = LatentUpscale().upscale({"samples": samples}, "nearest-exact", 64, 64, "center")
    assert torch.equal(out["samples"], samples[:, :, :, 4:12])


def test_latent_upscale_by_rounds_the_latent_size() -> None:
    samples = numbered(1, 5, 7)
    (out,) = LatentUpscaleBy().upscale({"samples": samples}, "bilinear", 1.5)
    # 7·1.5 = 10.5 → 10 and 5·1.5 = 7.5 → 8 (round half to even)
    assert torch.equal(out["samples"], F.interpolate(samples, size=(8, 10), mode="bilinear"))


def test_latent_upscale_bislerp() -> None:
    constant = torch.ones((1, 4, 3, 3)) * torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1)
    (out,) = LatentUpscaleBy().upscale({"samples": constant}, "bislerp", 2.0)
    assert out["samples"].shape == (1, 4, 6, 6)
    torch.testing.assert_close(out["samples"], torch.ones((1, 4, 6, 6)) * constant[:, :, :1, :1])
    # Two orthogonal unit vectors: halfway between them the slerp keeps unit length (a lerp would give 0.707).
    pair = torch.zeros((1, 2, 1, 2))
    pair[0, 0, 0, 0] = 1.0
    pair[0, 1, 0, 1] = 1.0
    (out,) = LatentUpscaleBy().upscale({"samples": pair}, "bislerp", 1.5)
    assert out["samples"].shape == (1, 2, 2, 3)
    # 2 → 3 columns: the middle one sits halfway, the outer ones on the originals
    half = 0.5**0.5
    expected_row = torch.tensor([[1.0, half, 0.0], [0.0, half, 1.0]])
    torch.testing.assert_close(out["samples"][0, :, 0, :], expected_row)
    torch.testing.assert_close(out["samples"][0, :, 1, :], expected_row)


# --- batches ----------------------------------------------------------------------------------------------------


def test_latent_from_batch_slices_and_records_batch_index() -> None:
    samples = numbered(4)
    (out,) = LatentFromBatch().frombatch({"samples": samples}, 2, 5)
    assert torch.equal(out["samples"], samples[2:4])  # length cut to what is left
    assert out["batch_index"] == [2, 3]
    (out,) = LatentFromBatch().frombatch({"samples": samples}, 9, 1)
    assert torch.equal(out["samples"], samples[3:4])  # index clamped to the last
    assert out["batch_index"] == [3]
    (out,) = LatentFromBatch().frombatch({"samples": samples}, -1, 1)
    assert torch.equal(out["samples"], samples[3:4])  # negative counts from the end
    (out,) = LatentFromBatch().frombatch({"samples": samples}, -10, 2)
    assert out["batch_index"] == [0, 1]


def test_latent_from_batch_keeps_existing_batch_index_and_masks() -> None:
    samples = numbered(4)
    masks = torch.stack([torch.full((1, 2, 2), 0.0), torch.full((1, 2, 2), 1.0)])  # 2 masks for 4 samples
    latent: dict[str, Any] = {"samples": samples, "batch_index": [10, 11, 12, 13], "noise_mask": masks}
    (out,) = LatentFromBatch().frombatch(latent, 1, 2)
    assert out["batch_index"] == [11, 12]
    # The masks are tiled to the batch (m0, m1, m0, m1) before slicing [1:3] → (m1, m0).
    assert torch.equal(out["noise_mask"], torch.stack([masks[1], masks[0]]))
    single = torch.full((1, 1, 2, 2), 0.5)
    (out,) = LatentFromBatch().frombatch({"samples": samples, "noise_mask": single}, 3, 1)
    assert torch.equal(out["noise_mask"], single)  # one mask for all stays whole
    assert latent["batch_index"] == [10, 11, 12, 13]


def test_repeat_latent_batch() -> None:
    samples = numbered(2)
    masks = torch.stack([torch.zeros((1, 2, 2)), torch.ones((1, 2, 2))])
    (out,) = RepeatLatentBatch().repeat({"samples": samples, "noise_mask": masks, "batch_index": [3, 4]}, 3)
    assert torch.equal(out["samples"], torch.cat([samples] * 3))
    assert torch.equal(out["noise_mask"], torch.cat([masks] * 3))
    # each copy continues after the previous: offset = max - min + 1 = 2
    assert out["batch_index"] == [3, 4, 5, 6, 7, 8]
    (out,) = RepeatLatentBatch().repeat({"samples": samples, "noise_mask": masks[:1]}, 2)
    assert torch.equal(out["noise_mask"], masks[:1])  # a single mask is left as is
    assert "batch_index" not in out


# --- LatentComposite --------------------------------------------------------------------------------------------


def test_latent_composite_places_at_x_y_over_eight() -> None:
    to = torch.zeros((1, 4, 4, 5))
    source = torch.ones((1, 4, 2, 2))
    (out,) = LatentComposite().composite({"samples": to}, {"samples": source}, x=15, y=8)
    expected = torch.zeros((1, 4, 4, 5))
    expected[:, :, 1:3, 1:3] = 1.0  # x 15 → cell 1, y 8 → cell 1
    assert torch.equal(out["samples"], expected)
    assert to.eq(0).all()
    (out,) = LatentComposite().composite({"samples": to}, {"samples": source}, x=32, y=24)
    expected = torch.zeros((1, 4, 4, 5))
    expected[:, :, 3:4, 4:5] = 1.0  # cut at the destination's edge
    assert torch.equal(out["samples"], expected)


def test_latent_composite_feather_ramps_inner_edges_only() -> None:
    to = torch.zeros((1, 1, 6, 6))
    source = torch.ones((1, 1, 4, 4))
    (out,) = LatentComposite().composite({"samples": to}, {"samples": source}, x=8, y=8, feather=16)
    # feather 16 px = 2 cells: factors 0.5 then 1 from every edge that is inside the destination
    ramp = torch.tensor([0.5, 1.0, 1.0, 0.5])
    expected = torch.zeros((1, 1, 6, 6))
    expected[0, 0, 1:5, 1:5] = ramp[:, None] * ramp[None, :]
    assert torch.equal(out["samples"], expected)
    # At the top-left corner (x = y = 0) only the right and bottom edges are feathered.
    (out,) = LatentComposite().composite({"samples": to}, {"samples": source}, x=0, y=0, feather=16)
    ramp_end = torch.tensor([1.0, 1.0, 1.0, 0.5])
    assert torch.equal(out["samples"][0, 0, :4, :4], ramp_end[:, None] * ramp_end[None, :])


def test_latent_composite_feather_blends_with_the_destination() -> None:
    to = torch.full((1, 1, 4, 4), 0.25)
    source = torch.ones((1, 1, 2, 2))
    (out,) = LatentComposite().composite({"samples": to}, {"samples": source}, x=8, y=8, feather=16)
    # 2×2 block inside: both ramps give 0.5·1 on each axis → weight 0.25 everywhere
    assert torch.equal(out["samples"][0, 0, 1:3, 1:3], torch.full((2, 2), 0.25 * 1.0 + 0.75 * 0.25))


def test_latent_composite_broadcasts_a_single_source() -> None:
    to = torch.zeros((3, 4, 2, 2))
    (out,) = LatentComposite().composite({"samples": to}, {"samples": torch.ones((1, 4, 1, 1))}, x=0, y=0)
    assert out["samples"][:, :, 0, 0].eq(1).all() and out["samples"][:, :, 1, 1].eq(0).all()
    with pytest.raises(RuntimeError):
        LatentComposite().composite({"samples": to}, {"samples": torch.ones((2, 4, 1, 1))}, x=0, y=0)
