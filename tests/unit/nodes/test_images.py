"""IMAGE nodes against independent references: numpy/Pillow arithmetic, hand-derived values, and (where ComfyUI's
own algorithm is a torch call) the same torch call made here with ComfyUI's documented arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from gpu_executor.nodes.images import (
    EmptyImage,
    ImageBatch,
    ImageBlend,
    ImageBlur,
    ImageCompositeMasked,
    ImageCrop,
    ImageInvert,
    ImagePadForOutpaint,
    ImageScale,
    ImageScaleBy,
    ImageScaleToTotalPixels,
    ImageSharpen,
    RepeatImageBatch,
)

pytestmark = pytest.mark.unit


def ramp_image(batch: int = 1, height: int = 6, width: int = 8, channels: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, height, width, channels), generator=generator, dtype=torch.float32)


def const_image(value: float, height: int = 4, width: int = 4, channels: int = 3, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, height, width, channels), value, dtype=torch.float32)


def assert_same(actual: torch.Tensor, expected: torch.Tensor | np.ndarray) -> None:
    expected_t = torch.as_tensor(expected)
    assert actual.shape == expected_t.shape
    assert actual.dtype == expected_t.dtype, (actual.dtype, expected_t.dtype)
    assert torch.equal(actual, expected_t)


# --- EmptyImage / ImageInvert -----------------------------------------------------------------------------------


def test_empty_image_fills_the_rgb_of_the_color_int() -> None:
    (image,) = EmptyImage().generate(width=4, height=3, batch_size=2, color=0x336699)
    expected = np.empty((2, 3, 4, 3), dtype=np.float32)
    expected[..., 0], expected[..., 1], expected[..., 2] = 0x33 / 255, 0x66 / 255, 0x99 / 255
    assert_same(image, expected)


def test_image_invert_is_one_minus_x() -> None:
    image = ramp_image()
    (out,) = ImageInvert().invert(image)
    assert_same(out, 1.0 - image.numpy())


# --- scaling ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
@pytest.mark.parametrize(("width", "height"), [(13, 9), (3, 2)])
def test_image_scale_torch_methods_match_interpolate(method: str, width: int, height: int) -> None:
    # ComfyUI's algorithm for these methods *is* torch.nn.functional.interpolate(size=(h, w), mode=method) on
    # channels-first samples, torch defaults otherwise; the reference is that call made independently here.
    image = ramp_image(batch=2)
    (out,) = ImageScale().upscale(image, method, width, height, "disabled")
    expected = F.interpolate(image.permute(0, 3, 1, 2), size=(height, width), mode=method).permute(0, 2, 3, 1)
    assert_same(out, expected.contiguous())


def pillow_lanczos(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    frames = []
    for frame in image.numpy():
        as_bytes = np.clip(frame * 255.0, 0, 255).astype(np.uint8)
        resized = Image.fromarray(as_bytes).resize((width, height), Image.Resampling.LANCZOS)
        frames.append(np.asarray(resized, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(frames))


@pytest.mark.parametrize("channels", [3, 4])
def test_image_scale_lanczos_is_pillow_on_8_bit(channels: int) -> None:
    image = ramp_image(batch=2, channels=channels)
    (out,) = ImageScale().upscale(image, "lanczos", 11, 5, "disabled")
    assert_same(out.contiguous(), pillow_lanczos(image, 11, 5))


def test_image_scale_center_crop_trims_the_wider_side() -> None:
    image = ramp_image(height=4, width=8)
    # 8×4 onto 4×4: x = round((8 - 8·(1/2)) / 2) = 2 columns off each side, then a same-size (identity) resize.
    (out,) = ImageScale().upscale(image, "nearest-exact", 4, 4, "center")
    assert_same(out.contiguous(), image[:, :, 2:6, :].contiguous())
    tall = ramp_image(height=8, width=4)
    (out,) = ImageScale().upscale(tall, "nearest-exact", 4, 4, "center")
    assert_same(out.contiguous(), tall[:, 2:6, :, :].contiguous())


def test_image_scale_center_crop_then_resize_matches_interpolate_of_the_crop() -> None:
    image = ramp_image(height=10, width=30)
    # 30×10 onto 8×8: x = round((30 - 30·(1/3)) / 2) = 10, so columns 10..19 are resized.
    (out,) = ImageScale().upscale(image, "bilinear", 8, 8, "center")
    crop = image[:, :, 10:20, :].permute(0, 3, 1, 2)
    assert_same(out, F.interpolate(crop, size=(8, 8), mode="bilinear").permute(0, 2, 3, 1).contiguous())


def test_image_scale_zero_side_keeps_the_aspect_ratio() -> None:
    image = ramp_image(height=10, width=20)
    (out,) = ImageScale().upscale(image, "nearest-exact", 0, 5, "disabled")
    assert out.shape == (1, 5, 10, 3)
    (out,) = ImageScale().upscale(image, "nearest-exact", 7, 0, "disabled")
    assert out.shape == (1, round(10 * 7 / 20), 7, 3) == (1, 4, 7, 3)  # round(3.5) = 4
    (out,) = ImageScale().upscale(image, "nearest-exact", 0, 0, "disabled")
    assert out is image


def test_image_scale_by_rounds_like_python() -> None:
    image = ramp_image(height=3, width=5)
    (out,) = ImageScaleBy().upscale(image, "bilinear", 1.5)
    # 5·1.5 = 7.5 → 8 and 3·1.5 = 4.5 → 4 (round half to even).
    assert out.shape == (1, 4, 8, 3)
    expected = F.interpolate(image.permute(0, 3, 1, 2), size=(4, 8), mode="bilinear").permute(0, 2, 3, 1)
    assert_same(out, expected.contiguous())


def test_image_scale_to_total_pixels_sizes() -> None:
    image = ramp_image(height=100, width=200)
    # total = 0.01·1024² = 10485.76; scale = sqrt(10485.76 / 20000) = 0.72408; 200·s = 144.8, 100·s = 72.4
    (out,) = ImageScaleToTotalPixels().upscale(image, "nearest-exact", 0.01, 1)
    assert out.shape == (1, 72, 145, 3)
    # in steps of 8: round(144.8 / 8) = 18 → 144, round(72.4 / 8) = 9 → 72
    (out,) = ImageScaleToTotalPixels().upscale(image, "nearest-exact", 0.01, 8)
    assert out.shape == (1, 72, 144, 3)


# --- filters ----------------------------------------------------------------------------------------------------


def numpy_gaussian(size: int, sigma: float) -> np.ndarray:
    axis = np.linspace(-1.0, 1.0, size)
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    weights = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    normalised: np.ndarray = weights / weights.sum()
    return normalised


def numpy_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    radius = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64), ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[1:3]
    out = np.zeros(image.shape, dtype=np.float64)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[:, dy : dy + height, dx : dx + width, :]
    return out


@pytest.mark.parametrize(("radius", "sigma"), [(1, 1.0), (3, 0.5), (2, 10.0)])
def test_image_blur_is_a_gaussian_on_a_unit_grid_with_reflected_borders(radius: int, sigma: float) -> None:
    image = ramp_image(batch=2, height=9, width=11)
    (out,) = ImageBlur().blur(image, radius, sigma)
    expected = numpy_filter(image.numpy(), numpy_gaussian(2 * radius + 1, sigma))
    assert out.shape == image.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)


def test_image_blur_keeps_a_constant_image() -> None:
    (out,) = ImageBlur().blur(const_image(0.5, 6, 6), 2, 1.0)
    np.testing.assert_allclose(out.numpy(), 0.5, atol=1e-6)


@pytest.mark.parametrize(("radius", "sigma", "alpha"), [(1, 1.0, 1.0), (2, 0.7, 0.3)])
def test_image_sharpen_is_an_unsharp_kernel_clamped(radius: int, sigma: float, alpha: float) -> None:
    image = ramp_image(height=9, width=10)
    (out,) = ImageSharpen().sharpen(image, radius, sigma, alpha)
    kernel = numpy_gaussian(2 * radius + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] += 1.0 - kernel.sum()  # the kernel sums to one
    expected = np.clip(numpy_filter(image.numpy(), kernel), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-5)


# --- blending ---------------------------------------------------------------------------------------------------

# image1 = 0.25, image2 = 0.75 (exact binary fractions): the blend before it is mixed by blend_factor and clamped.
BLEND_AT_FULL_FACTOR = {
    "normal": 0.75,
    "multiply": 0.25 * 0.75,  # 0.1875
    "screen": 1 - 0.75 * 0.25,  # 0.8125
    "overlay": 2 * 0.25 * 0.75,  # image1 <= 0.5: 0.375
    # image2 > 0.5: image1 + (2·image2 - 1)(g(image1) - image1), g(0.25) = ((16·0.25 - 12)·0.25 + 4)·0.25 = 0.5
    "soft_light": 0.25 + 0.5 * (0.5 - 0.25),  # 0.375
    "difference": -0.5,  # 0.25 - 0.75
}


@pytest.mark.parametrize(("mode", "expected"), sorted(BLEND_AT_FULL_FACTOR.items()))
def test_image_blend_modes_on_constants(mode: str, expected: float) -> None:
    for factor in (1.0, 0.5, 0.25):
        (out,) = ImageBlend().blend_images(const_image(0.25), const_image(0.75), factor, mode)
        # the blend is mixed back with image1, 0.25·(1 - f) + blend·f, then clamped to 0..1
        mixed = min(max(0.25 * (1 - factor) + expected * factor, 0.0), 1.0)
        assert_same(out, np.full((1, 4, 4, 3), mixed, dtype=np.float32))


def test_image_blend_soft_light_dark_branch_and_overlay_light_branch() -> None:
    # soft light with image2 <= 0.5: image1 - (1 - 2·image2)·image1·(1 - image1) = 0.75 - 0.5·0.75·0.25
    (out,) = ImageBlend().blend_images(const_image(0.75), const_image(0.25), 1.0, "soft_light")
    assert_same(out, np.full((1, 4, 4, 3), 0.75 - 0.5 * 0.75 * 0.25, dtype=np.float32))
    # overlay with image1 > 0.5: 1 - 2(1 - image1)(1 - image2) = 1 - 2·0.25·0.75
    (out,) = ImageBlend().blend_images(const_image(0.75), const_image(0.25), 1.0, "overlay")
    assert_same(out, np.full((1, 4, 4, 3), 1 - 2 * 0.25 * 0.75, dtype=np.float32))


def test_image_blend_fits_image2_to_image1_and_gives_rgb_an_opaque_alpha() -> None:
    rgba = const_image(0.25, channels=4)
    (out,) = ImageBlend().blend_images(rgba, const_image(0.75, height=8, width=6), 0.5, "normal")
    assert out.shape == (1, 4, 4, 4)
    np.testing.assert_allclose(out[..., :3].numpy(), 0.5, atol=1e-6)  # bicubic of a constant is that constant
    np.testing.assert_allclose(out[..., 3].numpy(), 0.25 * 0.5 + 1.0 * 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="Unsupported blend mode"):
        ImageBlend().blend_images(const_image(0.25), const_image(0.75), 0.5, "dodge")


def test_image_blend_broadcasts_a_single_image2_over_the_batch() -> None:
    image1 = torch.stack([const_image(0.25)[0], const_image(0.5)[0]])
    (out,) = ImageBlend().blend_images(image1, const_image(1.0), 1.0, "multiply")
    assert_same(out, image1.clone())


# --- crop / pad -------------------------------------------------------------------------------------------------


def test_image_crop_region_and_clamping() -> None:
    image = ramp_image(height=4, width=5)
    (out,) = ImageCrop().crop(image, 2, 2, 1, 1)
    assert_same(out, image[:, 1:3, 1:3, :])
    # x, y past the image are clamped to its last column/row; the size is cut at the border.
    (out,) = ImageCrop().crop(image, 512, 512, 100, 100)
    assert_same(out, image[:, 3:, 4:, :])


def test_image_pad_for_outpaint_left_feathering() -> None:
    image = ramp_image(height=6, width=6)
    canvas, mask = ImagePadForOutpaint().expand_image(image, left=2, top=0, right=0, bottom=0, feathering=2)
    assert canvas.shape == (1, 6, 8, 3)
    assert_same(canvas[:, :, :2, :], torch.full((1, 6, 2, 3), 0.5))
    assert_same(canvas[:, :, 2:, :], image)
    # Inside the image the distance to the padded (left) edge is the column j; mask = ((2 - j) / 2)² for j < 2.
    expected = np.zeros((1, 6, 8), dtype=np.float32)
    expected[:, :, :2] = 1.0
    expected[:, :, 2] = 1.0
    expected[:, :, 3] = 0.25
    assert_same(mask, expected)


def test_image_pad_for_outpaint_top_and_bottom_are_not_symmetric() -> None:
    image = ramp_image(height=6, width=6)
    _, mask = ImagePadForOutpaint().expand_image(image, left=0, top=2, right=0, bottom=2, feathering=2)
    assert mask.shape == (1, 10, 6)
    inner = mask[0, 2:8, 0].tolist()
    # d = i from the top (rows 0, 1 → 1, 0.25) but 6 - i from the bottom (row 5 → d = 1 → 0.25; row 4 → d = 2 → 0).
    assert inner == [1.0, 0.25, 0.0, 0.0, 0.0, 0.25]
    assert mask[0, :2].eq(1).all() and mask[0, 8:].eq(1).all()


def test_image_pad_for_outpaint_no_feathering_when_too_wide() -> None:
    image = ramp_image(height=4, width=4)
    # feathering·2 must be smaller than both sides; 2·2 = 4 is not, so the whole image area stays 0.
    _, mask = ImagePadForOutpaint().expand_image(image, left=8, top=8, right=8, bottom=8, feathering=2)
    assert mask.shape == (1, 20, 20)
    assert mask[0, 8:12, 8:12].eq(0).all()
    assert mask.sum().item() == 20 * 20 - 16


# --- batches ----------------------------------------------------------------------------------------------------


def test_image_batch_concatenates_and_fits_the_second_image() -> None:
    first, second = ramp_image(seed=1, height=4, width=4), ramp_image(batch=2, seed=2, height=4, width=4)
    (out,) = ImageBatch().batch(first, second)
    assert_same(out, torch.cat([first, second]))
    wide = ramp_image(seed=3, height=4, width=8)
    # 8×4 fitted to 4×4: center crop of columns 2..5, then a same-size bilinear (identity) resize.
    (out,) = ImageBatch().batch(first, wide)
    assert_same(out, torch.cat([first, wide[:, :, 2:6, :]]))


def test_image_batch_gives_rgb_an_opaque_alpha_next_to_rgba() -> None:
    rgba, rgb = ramp_image(channels=4, height=4, width=4), ramp_image(channels=3, height=4, width=4, seed=5)
    (out,) = ImageBatch().batch(rgba, rgb)
    assert out.shape == (2, 4, 4, 4)
    assert_same(out[1, ..., :3], rgb[0])
    assert out[1, ..., 3].eq(1.0).all()
    (out,) = ImageBatch().batch(rgb, rgba)
    assert out[0, ..., 3].eq(1.0).all()


def test_repeat_image_batch() -> None:
    image = ramp_image(batch=2)
    (out,) = RepeatImageBatch().repeat(image, 3)
    assert_same(out, torch.cat([image, image, image]))


# --- compositing ------------------------------------------------------------------------------------------------


def test_image_composite_masked_places_source_at_xy() -> None:
    destination = torch.zeros((1, 4, 5, 3))
    (out,) = ImageCompositeMasked().composite(destination, torch.ones((1, 2, 2, 3)), 1, 2, False)
    expected = torch.zeros((1, 4, 5, 3))
    expected[:, 2:4, 1:3, :] = 1.0
    assert_same(out, expected)
    assert destination.eq(0).all()  # the input is not modified


def test_image_composite_masked_cuts_the_source_at_the_border() -> None:
    source = ramp_image(height=3, width=3)
    (out,) = ImageCompositeMasked().composite(torch.zeros((1, 4, 4, 3)), source, 3, 2, False)
    expected = torch.zeros((1, 4, 4, 3))
    expected[:, 2:4, 3:4, :] = source[:, :2, :1, :]
    assert_same(out, expected)


def test_image_composite_masked_mask_and_batch() -> None:
    destination = torch.zeros((2, 3, 3, 3))
    source = torch.ones((1, 2, 2, 3))
    mask = torch.tensor([[1.0, 0.0], [0.25, 1.0]])  # [H,W] mask, same size as the source
    (out,) = ImageCompositeMasked().composite(destination, source, 0, 0, False, mask)
    expected = torch.zeros((2, 3, 3, 3))
    expected[:, :2, :2, :] = mask[None, :, :, None]
    assert_same(out, expected)  # the single source image is used for both destination images


def test_image_composite_masked_resize_source_is_bilinear_to_the_destination() -> None:
    source = ramp_image(height=2, width=3)
    (out,) = ImageCompositeMasked().composite(torch.zeros((1, 5, 4, 3)), source, 0, 0, True)
    expected = F.interpolate(source.permute(0, 3, 1, 2), size=(5, 4), mode="bilinear").permute(0, 2, 3, 1)
    assert_same(out, expected.contiguous())


def test_image_composite_masked_rgb_source_onto_rgba_destination() -> None:
    destination = torch.zeros((1, 2, 2, 4))
    (out,) = ImageCompositeMasked().composite(destination, torch.full((1, 1, 1, 3), 0.5), 1, 1, False)
    assert out[0, 1, 1].tolist() == [0.5, 0.5, 0.5, 1.0]
    assert out[0, 0, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
