"""VAE conventions (ComfyUI's): centre crop to multiples of 8, 0..1 ↔ -1..1, the latent mean, latent_format
scaling, and tiled decoding whose blending reproduces an untiled result exactly for pointwise functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

from gpu_executor.diffusion.models import vae as V  # noqa: N812
from gpu_executor.diffusion.models.ldm_layout import VaeSide, vae_layout
from gpu_executor.diffusion.models.loader import build_vae
from gpu_executor.diffusion.models.testing import fill_layout

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def small_vae() -> AutoencoderKL:
    side = VaeSide(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
    return build_vae(fill_layout(vae_layout(side, side), seed=5), device="cpu", dtype=torch.float32)


def test_encode_crops_centre_and_returns_the_mean(small_vae: AutoencoderKL) -> None:
    rgba = torch.rand(2, 21, 19, 4)
    latent = V.encode(small_vae, rgba)
    assert latent.shape == (2, 4, 2, 2)
    cropped = rgba[:, 2:18, 1:17, :3].movedim(-1, 1)  # offsets (21 % 8) // 2 and (19 % 8) // 2
    with torch.no_grad():
        expected = small_vae.encode(cropped * 2 - 1).latent_dist.mean
    torch.testing.assert_close(latent, expected)
    torch.testing.assert_close(V.encode(small_vae, rgba, batch_size=1), latent)


def test_decode_maps_to_unit_range(small_vae: AutoencoderKL) -> None:
    z = torch.randn(2, 4, 3, 5)
    image = V.decode(small_vae, z)
    with torch.no_grad():
        expected = ((small_vae.decode(z).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert image.shape == (2, 24, 40, 3)
    torch.testing.assert_close(image, expected)


def test_latent_format_scaling() -> None:
    z = torch.randn(1, 4, 2, 2)
    assert torch.allclose(V.process_in(z, 0.18215), z * 0.18215)
    assert torch.allclose(V.process_out(V.process_in(z, 1.5305, 0.0609), 1.5305, 0.0609), z, atol=1e-6)


def test_tiled_decode_equals_decode_when_one_tile_covers_the_latent(small_vae: AutoencoderKL) -> None:
    z = torch.randn(1, 4, 6, 7)
    torch.testing.assert_close(V.decode_tiled(small_vae, z, tile_size=512, overlap=64), V.decode(small_vae, z))


def test_tiled_decode_shapes_with_many_tiles(small_vae: AutoencoderKL) -> None:
    z = torch.randn(2, 4, 20, 13)
    out = V.decode_tiled(small_vae, z, tile_size=64, overlap=32)  # overlap reduced to 16 px (tile_size // 4)
    assert out.shape == (2, 160, 104, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    latent = V.encode_tiled(small_vae, torch.rand(1, 70, 90, 3), tile_size=32, overlap=8)
    assert latent.shape == (1, 4, 8, 11)


@pytest.mark.parametrize(("tile", "overlap"), [((8, 8), 2), ((16, 4), 2), ((4, 16), 1), ((5, 7), 3)])
def test_tile_blending_is_exact_for_pointwise_functions(tile: tuple[int, int], overlap: int) -> None:
    x = torch.randn(2, 3, 19, 23)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=8, mode="nearest") * 2 + 1

    torch.testing.assert_close(V.tiled_scale(x, up, tile, overlap, 8, 3), up(x))


def test_crop_to_multiple() -> None:
    x = torch.arange(10 * 17).reshape(1, 10, 17, 1).float()
    out = V.crop_to_multiple(x)
    assert out.shape == (1, 8, 16, 1)
    assert torch.equal(out, x[:, 1:9, 0:16])
