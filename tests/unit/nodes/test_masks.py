"""MASK nodes on small hand-checked masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_executor.nodes.masks import (
    CropMask,
    FeatherMask,
    GrowMask,
    ImageToMask,
    InvertMask,
    MaskToImage,
    SolidMask,
)

pytestmark = pytest.mark.unit


def grid(rows: list[str]) -> torch.Tensor:
    """A [1,H,W] mask from rows of '#' (1) and '.' (0)."""
    return torch.tensor([[[1.0 if c == "#" else 0.0 for c in row] for row in rows]], dtype=torch.float32)


def test_image_to_mask_picks_a_channel() -> None:
    image = torch.rand((2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    for index, channel in enumerate(["red", "green", "blue", "alpha"]):
        (mask,) = ImageToMask().image_to_mask(image, channel)
        assert torch.equal(mask, image[..., index])
    with pytest.raises(IndexError):
        ImageToMask().image_to_mask(image[..., :3], "alpha")


def test_mask_to_image_repeats_the_mask_in_rgb() -> None:
    mask = torch.rand((2, 3, 4), generator=torch.Generator().manual_seed(2))
    (image,) = MaskToImage().mask_to_image(mask)
    assert image.shape == (2, 3, 4, 3)
    for c in range(3):
        assert torch.equal(image[..., c], mask)
    (single,) = MaskToImage().mask_to_image(mask[0])  # [H,W] is accepted
    assert single.shape == (1, 3, 4, 3)


def test_solid_mask() -> None:
    (mask,) = SolidMask().solid(0.25, width=5, height=3)
    assert mask.dtype == torch.float32
    assert torch.equal(mask, torch.full((1, 3, 5), 0.25))


def test_invert_mask() -> None:
    mask = torch.tensor([[[0.0, 0.25], [1.0, 0.5]]])
    (out,) = InvertMask().invert(mask)
    assert torch.equal(out, torch.tensor([[[1.0, 0.75], [0.0, 0.5]]]))


def test_crop_mask() -> None:
    mask = torch.arange(20, dtype=torch.float32).reshape(4, 5)  # [H,W] is accepted
    (out,) = CropMask().crop(mask, x=1, y=2, width=3, height=5)
    assert torch.equal(out, mask[None, 2:4, 1:4])


# --- GrowMask ---------------------------------------------------------------------------------------------------

DOT = [".....", ".....", "..#..", ".....", "....."]


@pytest.mark.parametrize(
    ("expand", "tapered", "expected"),
    [
        (1, True, [".....", "..#..", ".###.", "..#..", "....."]),  # plus-shaped footprint
        (1, False, [".....", ".###.", ".###.", ".###.", "....."]),  # full 3×3 footprint
        (2, True, ["..#..", ".###.", "#####", ".###.", "..#.."]),  # two plus steps: a diamond
        (2, False, ["#####", "#####", "#####", "#####", "#####"]),
        (0, True, DOT),
    ],
)
def test_grow_mask_dilates(expand: int, tapered: bool, expected: list[str]) -> None:
    (out,) = GrowMask().expand_mask(grid(DOT), expand, tapered)
    assert torch.equal(out, grid(expected))


def test_grow_mask_negative_erodes_and_borders_reflect() -> None:
    hole = grid(["#####", "#####", "##.##", "#####", "#####"])
    (out,) = GrowMask().expand_mask(hole, -1, True)
    assert torch.equal(out, grid(["#####", "##.##", "#...#", "##.##", "#####"]))
    # The image border is mirrored, not zero: eroding an all-ones mask changes nothing.
    (out,) = GrowMask().expand_mask(torch.ones((1, 4, 4)), -3, False)
    assert torch.equal(out, torch.ones((1, 4, 4)))
    corner = grid([".###", "####", "####"])
    (out,) = GrowMask().expand_mask(corner, -1, True)
    assert torch.equal(out, grid(["..##", ".###", "####"]))


def test_grow_mask_grey_values_take_the_neighbourhood_max_and_min() -> None:
    mask = torch.tensor([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]])
    (grown,) = GrowMask().expand_mask(mask, 1, True)
    expected = [[0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [0.8, 0.9, 0.9]]
    assert torch.equal(grown, torch.tensor([expected]))
    (shrunk,) = GrowMask().expand_mask(mask, -1, False)
    expected = [[0.1, 0.1, 0.2], [0.1, 0.1, 0.2], [0.4, 0.4, 0.5]]
    assert torch.equal(shrunk, torch.tensor([expected]))


def test_grow_mask_batch_and_2d_input() -> None:
    batch = torch.cat([grid(DOT), grid(["#....", ".....", ".....", ".....", "....."])])
    (out,) = GrowMask().expand_mask(batch, 1, True)
    assert out.shape == (2, 5, 5)
    assert torch.equal(out[1], grid(["##...", "#....", ".....", ".....", "....."])[0])
    (single,) = GrowMask().expand_mask(grid(DOT)[0], 1, True)
    assert single.shape == (1, 5, 5)


# --- FeatherMask ------------------------------------------------------------------------------------------------


def test_feather_mask_left_and_top_ramps() -> None:
    (out,) = FeatherMask().feather(torch.ones((1, 4, 6)), left=3, top=2, right=0, bottom=0)
    cols = np.array([1 / 3, 2 / 3, 1, 1, 1, 1], dtype=np.float32)
    rows = np.array([0.5, 1, 1, 1], dtype=np.float32)
    expected = rows[:, None] * cols[None, :]
    np.testing.assert_array_equal(out[0].numpy(), expected)


def test_feather_mask_right_and_bottom_start_at_index_zero_like_comfyui() -> None:
    # ComfyUI indexes the right ramp as [-x]: x = 0 is column 0 (factor 1/right), x = 1 is the last column, ...
    (out,) = FeatherMask().feather(torch.ones((1, 3, 6)), left=0, top=0, right=3, bottom=0)
    np.testing.assert_array_equal(out[0, 0].numpy(), np.array([1 / 3, 1, 1, 1, 1, 2 / 3], dtype=np.float32))
    (out,) = FeatherMask().feather(torch.ones((1, 5, 2)), left=0, top=0, right=0, bottom=2)
    np.testing.assert_array_equal(out[0, :, 0].numpy(), np.array([0.5, 1, 1, 1, 1], dtype=np.float32))


def test_feather_mask_clamps_to_the_size_and_keeps_the_input() -> None:
    mask = torch.ones((4, 4))
    (out,) = FeatherMask().feather(mask, left=100, top=0, right=0, bottom=0)
    np.testing.assert_array_equal(out[0, 0].numpy(), np.array([0.25, 0.5, 0.75, 1.0], dtype=np.float32))
    assert mask.eq(1).all()
