"""Architecture detection on shape-only layouts of full-size checkpoints, and the generated configs/key maps checked
against diffusers and transformers modules built on the meta device (strict key and shape equality)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from gpu_executor.diffusion.models.configs import (
    clip_text_config,
    unet_diffusers_config,
    vae_config_from_shapes,
    vae_diffusers_config,
)
from gpu_executor.diffusion.models.convert import (
    UNetKeyMap,
    convert_vae,
    fit_clip_to_model,
    open_clip_to_canonical,
    strip_prefix,
)
from gpu_executor.diffusion.models.detection import (
    SD2_V_PROBE_KEY,
    SD2_V_STD_THRESHOLD,
    UNetConfig,
    detect_architecture,
    detect_unet_config,
)
from gpu_executor.diffusion.models.ldm_layout import (
    CLIP_G,
    CLIP_H,
    clip_open_clip_layout,
    prefixed,
    unet_layout,
    vae_layout,
)
from gpu_executor.diffusion.models.loader import quiet_construction
from gpu_executor.diffusion.models.testing import (
    sd1_unet_config,
    sd2_unet_config,
    sd2_v_probe,
    sdxl_refiner_unet_config,
    sdxl_unet_config,
    shape_layout,
    tiny_sd1_layout,
    tiny_sd1_unet_config,
)

pytestmark = pytest.mark.unit


def test_sd1() -> None:
    a = detect_architecture(shape_layout("sd1"))
    assert (a.family, a.supported, a.prediction, a.latent_scale) == ("sd1", True, "eps", 0.18215)
    u = a.unet
    assert u is not None
    assert u.model_channels == 320 and u.context_dim == 768 and u.adm_in_channels is None
    assert u.channel_mult == (1, 2, 4, 4) and u.num_res_blocks == (2, 2, 2, 2)
    assert u.attention_levels == (True, True, True, False)
    assert u.transformer_depth == (1, 1, 1, 1, 1, 1, 0, 0)
    assert u.transformer_depth_output == (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0)
    assert u.transformer_depth_middle == 1
    assert not u.use_linear_in_transformer and u.num_heads == 8
    assert [(t.name, t.layout, t.num_layers) for t in a.text_encoders] == [("l", "transformers", 12)]
    assert a.unet_prefix == "model.diffusion_model." and a.vae_prefix == "first_stage_model."


@pytest.mark.parametrize(("v", "expected"), [(False, "eps"), (True, "v")])
def test_sd2_prediction_from_the_weight_statistic(v: bool, expected: str) -> None:
    probe = sd2_v_probe(v)
    (tensor,) = probe.values()
    assert (float(tensor.std(unbiased=False)) > SD2_V_STD_THRESHOLD) is v
    a = detect_architecture(shape_layout("sd2"), get_tensor=probe.__getitem__)
    assert (a.family, a.prediction, a.latent_scale) == ("sd2", expected, 0.18215)
    assert a.unet is not None and a.unet.context_dim == 1024 and a.unet.use_linear_in_transformer
    assert a.unet.num_head_channels == 64
    assert [(t.name, t.layout, t.num_layers, t.hidden_size) for t in a.text_encoders] == [("h", "open_clip", 24, 1024)]


def test_sd2_without_the_weight_is_undetermined_and_inpaint_is_eps() -> None:
    assert detect_architecture(shape_layout("sd2")).prediction == "unknown"
    layout = dict(shape_layout("sd2"))
    layout["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    a = detect_architecture(layout, get_tensor=sd2_v_probe(True).__getitem__)
    assert (a.family, a.variant, a.prediction) == ("sd2", "inpaint", "eps")


def test_sdxl_base() -> None:
    a = detect_architecture(shape_layout("sdxl"))
    assert (a.family, a.supported, a.prediction, a.latent_scale, a.variant) == ("sdxl", True, "eps", 0.13025, None)
    u = a.unet
    assert u is not None
    assert (u.adm_in_channels, u.context_dim, u.channel_mult) == (2816, 2048, (1, 2, 4))
    assert u.transformer_depth == (0, 0, 2, 2, 10, 10) and u.transformer_depth_middle == 10
    assert u.attention_levels == (False, True, True)
    assert [(t.name, t.prefix) for t in a.text_encoders] == [
        ("l", "conditioner.embedders.0.transformer."),
        ("g", "conditioner.embedders.1.model."),
    ]
    vpred = detect_architecture({**shape_layout("sdxl"), "v_pred": (), "ztsnr": ()})
    assert vpred.prediction == "v" and vpred.zsnr


def test_sdxl_refiner() -> None:
    a = detect_architecture(shape_layout("sdxl_refiner"))
    assert (a.family, a.supported, a.latent_scale) == ("sdxl_refiner", True, 0.13025)
    assert a.unet is not None and (a.unet.model_channels, a.unet.adm_in_channels, a.unet.context_dim) == (
        384,
        2560,
        1280,
    )
    assert [(t.name, t.layout, t.num_layers) for t in a.text_encoders] == [("g", "open_clip", 32)]


def test_sd3_is_recognised_but_unsupported() -> None:
    a = detect_architecture(shape_layout("sd3"))
    assert (a.family, a.supported, a.prediction, a.latent_channels) == ("sd3", False, "flow", 16)
    assert a.unet is None and a.reason and "not supported" in a.reason
    assert a.details["depth"] == 24 and a.details["joint_blocks"] == 24
    assert {t.name for t in a.text_encoders} == {"l", "g"}


@pytest.mark.parametrize(("name", "variant"), [("flux", "dev"), ("flux_schnell", "schnell")])
def test_flux_is_recognised_but_unsupported(name: str, variant: str) -> None:
    a = detect_architecture(shape_layout(name))
    assert (a.family, a.supported, a.variant, a.vae_prefix) == ("flux", False, variant, "vae.")
    assert a.details["depth"] == 19 and a.details["depth_single_blocks"] == 38


def test_unrelated_files_are_unknown() -> None:
    a = detect_architecture({"foo.weight": (3, 3)})
    assert a.family == "unknown" and not a.supported


def test_tiny_layout_is_derived_not_assumed() -> None:
    for levels in (1, 2):
        a = detect_architecture(tiny_sd1_layout(levels))
        assert a.family == "sd1" and a.unet == tiny_sd1_unet_config(levels)
    assert tiny_sd1_unet_config(2).attention_levels == (False, True)


def test_diffusers_layout_unet_is_detected() -> None:
    cfg = sdxl_unet_config()
    diffusers_keys = UNetKeyMap(cfg).convert(unet_layout(cfg))
    a = detect_architecture(diffusers_keys)
    assert (a.family, a.unet_layout, a.unet) == ("sdxl", "diffusers", cfg)


def test_diffusers_layout_sd2_uses_the_same_v_prediction_weight() -> None:
    cfg = sd2_unet_config()
    km = UNetKeyMap(cfg)
    diffusers_keys = km.convert(unet_layout(cfg))
    probe_key = km.to_diffusers(SD2_V_PROBE_KEY)
    assert probe_key == "up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias"
    for v, expected in ((True, "v"), (False, "eps")):
        (tensor,) = sd2_v_probe(v).values()
        a = detect_architecture(diffusers_keys, get_tensor={probe_key: tensor}.__getitem__)
        assert (a.family, a.unet_layout, a.prediction) == ("sd2", "diffusers", expected)


CONFIGS: dict[str, Callable[[], UNetConfig]] = {
    "sd1": sd1_unet_config,
    "sd2": sd2_unet_config,
    "sdxl": sdxl_unet_config,
    "sdxl_refiner": sdxl_refiner_unet_config,
}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_full_size_unet_conversion_matches_diffusers_modules(family: str) -> None:
    layout = shape_layout(family)
    cfg = detect_unet_config(layout, "model.diffusion_model.")
    assert cfg == CONFIGS[family]()
    config = unet_diffusers_config(cfg, family)
    with torch.device("meta"):
        model = quiet_construction(lambda: UNet2DConditionModel(**config))()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert UNetKeyMap(cfg).convert(strip_prefix(layout, "model.diffusion_model.")) == expected
    roundtrip = UNetKeyMap(cfg).convert_back(expected)
    assert roundtrip == strip_prefix(layout, "model.diffusion_model.")


def test_full_size_vae_conversion_matches_diffusers() -> None:
    ldm = vae_layout()
    cfg = vae_config_from_shapes(ldm)
    with torch.device("meta"):
        model = quiet_construction(lambda: AutoencoderKL(**vae_diffusers_config(cfg.encoder, cfg)))()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    meta = {k: torch.empty(s, device="meta") for k, s in ldm.items()}
    got = {k: tuple(v.shape) for k, v in convert_vae(meta, 4).items()}
    assert got == expected


@pytest.mark.parametrize(("kind", "shape"), [("h", CLIP_H), ("g", CLIP_G)])
def test_open_clip_conversion_matches_transformers(kind: str, shape: object) -> None:
    meta = {k: torch.empty(s, device="meta") for k, s in clip_open_clip_layout(shape).items()}  # type: ignore[arg-type]
    canonical = open_clip_to_canonical(meta)
    cfg = CLIPTextConfig(**clip_text_config(kind, {k: tuple(v.shape) for k, v in canonical.items()}))
    cls = CLIPTextModelWithProjection if kind == "g" else CLIPTextModel
    with torch.device("meta"):
        model = cls(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fitted = fit_clip_to_model(canonical, expected)
    assert {k: tuple(v.shape) for k, v in fitted.items()} == expected
    assert cfg.num_hidden_layers == (24 if kind == "h" else 32)


def test_prefixed_layouts_keep_every_key() -> None:
    layout = prefixed({"a": (1,)}, "p.")
    assert layout == {"p.a": (1,)}
