"""ControlNets in LDM and diffusers layouts: loading, residual shapes that fit the UNet, strength, hint
preprocessing and the start/end percent window."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from safetensors.torch import save_file

from gpu_executor.diffusion.models.controlnet import (
    ControlNetApplication,
    DiscreteSchedule,
    control_residuals,
    controlnet_active,
    load_controlnet,
    prepare_hint,
)
from gpu_executor.diffusion.models.detection import detect_architecture
from gpu_executor.diffusion.models.errors import UnsupportedModelError
from gpu_executor.diffusion.models.ldm_layout import unet_layout
from gpu_executor.diffusion.models.loader import build_unet
from gpu_executor.diffusion.models.testing import fill_layout, make_tiny_controlnet, tiny_sd1_unet_config

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    cfg = tiny_sd1_unet_config(2)
    layout = unet_layout(cfg)
    arch = detect_architecture({"model.diffusion_model." + k: v for k, v in layout.items()})
    model, _ = build_unet(arch, fill_layout(layout, 1), device="cpu", dtype=torch.float32)
    return model


@pytest.fixture(scope="module")
def controlnet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cn")
    return {
        layout: make_tiny_controlnet(d / f"cn-{layout}.safetensors", levels=2, seed=4, layout=layout)
        for layout in ("ldm", "diffusers")
    }


def test_residuals_fit_the_unet(unet: UNet2DConditionModel, controlnet_files: dict[str, Path]) -> None:
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([500.0])
    ctx = torch.randn(2, 77, 768)
    hint = torch.rand(1, 64, 64, 3)
    results = {}
    for layout, path in controlnet_files.items():
        cn = load_controlnet(path)
        assert (cn.family, cn.layout, cn.hint_channels) == ("sd1", layout, 3)
        results[layout] = control_residuals(cn, hint=hint, x=x, timestep=t, context=ctx, strength=1.0)
    ldm, diff = results["ldm"], results["diffusers"]
    # conv_in, level-0 res block, downsample (320 ch @ 8x8, 8x8, 4x4), level-1 res block (640 @ 4x4)
    assert [tuple(r.shape) for r in ldm.down] == [(2, 320, 8, 8), (2, 320, 8, 8), (2, 320, 4, 4), (2, 640, 4, 4)]
    assert tuple(ldm.mid.shape) == (2, 640, 4, 4)
    for a, b in zip(ldm.down, diff.down, strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=ctx).sample
        guided = unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=ldm.down,
                      mid_block_additional_residual=ldm.mid).sample  # fmt: skip
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)


def test_strength_scales_residuals(controlnet_files: dict[str, Path]) -> None:
    cn = load_controlnet(controlnet_files["ldm"])
    args = {"hint": torch.rand(1, 32, 48, 3), "x": torch.randn(1, 4, 4, 6), "timestep": 250.0,
            "context": torch.randn(1, 77, 768)}  # fmt: skip
    full = control_residuals(cn, strength=1.0, **args)  # type: ignore[arg-type]
    half = control_residuals(cn, strength=0.5, **args)  # type: ignore[arg-type]
    for a, b in zip((*full.down, full.mid), (*half.down, half.mid), strict=True):
        torch.testing.assert_close(a * 0.5, b)


def test_hint_is_centre_cropped_and_resized_nearest_exact() -> None:
    image = torch.rand(1, 100, 50, 3)
    hint = prepare_hint(image, torch.zeros(3, 4, 8, 8))
    assert hint.shape == (1, 3, 64, 64)  # a batch of one is broadcast by the model
    expected = F.interpolate(image.movedim(-1, 1)[:, :, 25:75, :], size=(64, 64), mode="nearest-exact")
    torch.testing.assert_close(hint, expected)
    batch = prepare_hint(torch.rand(2, 16, 16, 3), torch.zeros(4, 4, 2, 2), batched_number=2)
    assert batch.shape == (4, 3, 16, 16)
    torch.testing.assert_close(batch[:2], batch[2:])


def test_start_end_percent_window(controlnet_files: dict[str, Path]) -> None:
    sched = DiscreteSchedule()
    assert float(sched.sigmas[-1]) == pytest.approx(14.6146, abs=1e-3)
    assert float(sched.sigmas[0]) == pytest.approx(0.0292, abs=1e-3)
    assert sched.percent_to_sigma(0.0) > 1e8 and sched.percent_to_sigma(1.0) == 0.0
    mid = sched.percent_to_sigma(0.5)
    assert controlnet_active(14.0, 0.0, 1.0) and controlnet_active(0.03, 0.0, 1.0)
    assert not controlnet_active(14.0, 0.5, 1.0) and controlnet_active(mid * 0.9, 0.5, 1.0)
    assert not controlnet_active(0.1, 0.0, 0.5) and controlnet_active(mid * 1.1, 0.0, 0.5)
    app = ControlNetApplication(load_controlnet(controlnet_files["ldm"]), torch.rand(1, 16, 16, 3), 0.8, 0.5, 1.0)
    args = (torch.randn(1, 4, 2, 2), 900.0, torch.randn(1, 77, 768))
    assert app.residuals(*args, sigma=14.0) is None
    assert app.residuals(*args, sigma=0.5) is not None


def test_unsupported_controlnet_files(tmp_path: Path) -> None:
    f = tmp_path / "control-lora.safetensors"
    save_file({"lora_controlnet": torch.zeros(1), "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}, f)
    with pytest.raises(UnsupportedModelError, match="Control-LoRA"):
        load_controlnet(f)
    t2i = tmp_path / "t2i.safetensors"
    save_file({"body.0.block1.weight": torch.zeros(1)}, t2i)
    with pytest.raises(UnsupportedModelError, match="T2I"):
        load_controlnet(t2i)
