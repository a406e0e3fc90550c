"""Initial noise and the inpainting noise mask."""

from __future__ import annotations

import pytest
import torch

from gpu_executor.diffusion.sampling.noise import prepare_mask, prepare_noise, repeat_to_batch_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seed", [0, 42, 2 ** 40 + 7])
def test_noise_is_torch_randn_from_the_seeded_cpu_generator(seed: int) -> None:
    latent = torch.zeros(2, 4, 8, 6)
    expected = torch.randn((2, 4, 8, 6), generator=torch.manual_seed(seed))
    noise = prepare_noise(latent, seed)
    assert noise.device.type == "cpu" and noise.dtype == torch.float32
    assert torch.equal(noise, expected)


def test_noise_does_not_reseed_the_global_generator() -> None:
    torch.manual_seed(123)
    expected_next = torch.randn(3, generator=torch.Generator().manual_seed(123))
    prepare_noise(torch.zeros(1, 4, 2, 2), 5)
    assert torch.equal(torch.randn(3), expected_next)


def test_batch_index_draws_per_item_noise_up_to_the_largest_index() -> None:
    latent = torch.zeros(3, 4, 4, 4)
    generator = torch.manual_seed(9)
    per_item = [torch.randn((1, 4, 4, 4), generator=generator) for _ in range(6)]
    noise = prepare_noise(latent, 9, batch_inds=[5, 2, 2])
    assert torch.equal(noise, torch.cat([per_item[5], per_item[2], per_item[2]]))
    # item k of a batch of n gets the noise it would have had in the batch drawn item by item
    assert torch.equal(prepare_noise(torch.zeros(1, 4, 4, 4), 9, batch_inds=torch.tensor([3])), per_item[3])


def test_mask_is_resized_bilinearly_without_rounding_and_broadcast() -> None:
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 8:] = 1.0
    prepared = prepare_mask(mask, (2, 4, 8, 8), "cpu")
    assert prepared.shape == (2, 4, 8, 8) and prepared.dtype == torch.float32
    expected = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(8, 8), mode="bilinear")
    assert torch.equal(prepared[1, 3], expected[0, 0])
    small = prepare_mask(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), (1, 4, 4, 4), "cpu")
    assert 0 < float(small[0, 0, 1, 1]) < 1  # fractional weights survive (no rounding)


def test_repeat_to_batch_size() -> None:
    t = torch.arange(2).view(2, 1)
    assert repeat_to_batch_size(t, 5).flatten().tolist() == [0, 1, 0, 1, 0]
    assert repeat_to_batch_size(t, 1).flatten().tolist() == [0]
    assert repeat_to_batch_size(t, 2) is t
