"""Build diffusers/transformers modules from single-file checkpoints, the way ComfyUI's loaders accept them.

* `load_checkpoint` — CheckpointLoaderSimple: UNet + VAE + text encoders from one LDM/SGM ``.safetensors`` file.
* `load_unet` — UNETLoader: a diffusion model alone (LDM keys with or without ``model.diffusion_model.``, or a
  diffusers-layout UNet).
* `load_vae` — VAELoader: a standalone VAE (LDM layout such as vae-ft-mse, or diffusers layout).
* `load_clip` — CLIPLoader/DualCLIPLoader: a standalone text encoder (transformers ``text_model.*`` or OpenCLIP
  layout, under any of the prefixes ComfyUI writes).

Modules are created on the meta device and receive the converted weights with ``load_state_dict(strict=True,
assign=True)``: every parameter must come from the file and every (used) tensor of the file must land in a module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
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
    clip_to_canonical,
    convert_vae,
    fit_clip_to_model,
    normalize_diffusers_vae,
    open_clip_to_canonical,
    vae_diffusers_to_ldm,
)
from gpu_executor.diffusion.models.detection import (
    Architecture,
    TextEncoderSlot,
    detect_architecture,
    text_encoder_slot,
)
from gpu_executor.diffusion.models.errors import ConversionError, UnsupportedModelError
from gpu_executor.diffusion.models.safetensors_file import PathLike, SafetensorsFile, load_tensors, read_header

log = logging.getLogger(__name__)

T = TypeVar("T")
Device = str | torch.device
TextEncoder = CLIPTextModel | CLIPTextModelWithProjection


@dataclass
class LoadedUNet:
    path: Path
    architecture: Architecture
    unet: UNet2DConditionModel
    unet_key_map: UNetKeyMap

    @property
    def prediction(self) -> str:
        return self.architecture.prediction

    @property
    def latent_scale(self) -> float:
        return self.architecture.latent_scale


@dataclass
class LoadedCheckpoint:
    path: Path
    architecture: Architecture
    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    text_encoders: dict[str, TextEncoder]
    unet_key_map: UNetKeyMap
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def prediction(self) -> str:
        return self.architecture.prediction

    @property
    def latent_scale(self) -> float:
        return self.architecture.latent_scale


def new_module(cls: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Instantiate a diffusers/transformers class (typed ``Any``: diffusers has no type information mypy can use)."""
    return cls(*args, **kwargs)


def materialize(
    factory: Callable[[], Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: Device,
    dtype: torch.dtype,
    what: str,
) -> Any:
    """Create ``factory()`` on the meta device, assign ``state_dict`` (strict) and move it to ``device``/``dtype``.

    Returns the module (an ``nn.Module``; typed ``Any`` because the diffusers classes are untyped)."""
    with torch.device("meta"):
        module: torch.nn.Module = factory()
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"{what}: {len(missing)} missing weights {missing[:5]}, "
            f"{len(unexpected)} unexpected weights {unexpected[:5]}"
        )
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(v.shape) != tuple(state_dict[k].shape)
    ]
    if wrong:
        raise ConversionError(f"{what}: {len(wrong)} weights have the wrong shape, e.g. {wrong[:3]}")
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
    _materialize_buffers(module, device)
    # torch's own Module.to: diffusers' override warns about fp32-pinned modules even when there are none.
    torch.nn.Module.to(module, device=device, dtype=dtype)
    module.eval()
    module.requires_grad_(False)
    return module


def _materialize_buffers(module: torch.nn.Module, device: Device) -> None:
    """Non-persistent buffers are not in state dicts; recreate the known ones (CLIP position ids)."""
    for name, buf in list(module.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf == "position_ids":
            n = buf.shape[-1]
            owner.register_buffer(leaf, torch.arange(n, device=device).expand((1, -1)), persistent=False)
        else:
            raise ConversionError(f"buffer {name} has no value after loading")


def quiet_construction(fn: Callable[[], T]) -> Callable[[], T]:
    """Run a constructor with transformers/diffusers logging limited to errors."""

    def run() -> T:
        loggers = [logging.getLogger(n) for n in ("transformers", "diffusers")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            return fn()
        finally:
            for lg, lvl in zip(loggers, levels, strict=True):
                lg.setLevel(lvl)

    return run


# ----------------------------------------------------------------------------------------------------------- UNet


def build_unet(
    arch: Architecture, tensors: Mapping[str, torch.Tensor], *, device: Device, dtype: torch.dtype
) -> tuple[UNet2DConditionModel, UNetKeyMap]:
    """``tensors`` are the UNet weights with the diffusion-model prefix removed."""
    if arch.unet is None:
        raise UnsupportedModelError(f"{arch.family}: no UNet")
    key_map = UNetKeyMap(arch.unet)
    sd = key_map.convert(tensors) if arch.unet_layout == "ldm" else dict(tensors)
    config = unet_diffusers_config(arch.unet, arch.family)
    unet: UNet2DConditionModel = materialize(
        quiet_construction(lambda: new_module(UNet2DConditionModel, **config)),
        sd,
        device=device,
        dtype=dtype,
        what=f"{arch.family} UNet",
    )
    return unet, key_map


def _require_supported(arch: Architecture, path: Path) -> None:
    if not arch.supported:
        raise UnsupportedModelError(f"{path.name}: {arch.reason or arch.family + ' is not supported'}")
    if arch.prediction == "unknown":
        raise UnsupportedModelError(f"{path.name}: could not determine the prediction type")


def detect_file(path: PathLike) -> Architecture:
    """Detect a file's architecture from its header (and, for SD2, one weight)."""
    with SafetensorsFile(path) as f:
        return detect_architecture(f.shapes(), get_tensor=f.get)


def load_unet(path: PathLike, *, device: Device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedUNet:
    p = Path(path)
    arch = detect_file(p)
    _require_supported(arch, p)
    tensors = load_tensors(p, prefix=arch.unet_prefix, strip_prefix=True, device=device)
    if arch.unet_prefix == "":
        tensors = {k: v for k, v in tensors.items() if not _is_auxiliary_key(k)}
    unet, key_map = build_unet(arch, tensors, device=device, dtype=dtype)
    return LoadedUNet(path=p, architecture=arch, unet=unet, unet_key_map=key_map)


def _is_auxiliary_key(key: str) -> bool:
    """Top-level marker tensors some checkpoints carry next to the weights (v_pred, ztsnr, edm_*)."""
    return key in ("v_pred", "ztsnr", "edm_mean", "edm_std") or key.startswith("edm_vpred.")


# ------------------------------------------------------------------------------------------------------------ VAE


def build_vae(
    ldm: Mapping[str, torch.Tensor], *, device: Device, dtype: torch.dtype, scaling_factor: float = 0.18215
) -> AutoencoderKL:
    """Build an ``AutoencoderKL`` from LDM-layout VAE weights (prefix removed). The decoder may be narrower than
    the encoder (ComfyUI sizes the two independently); diffusers' ``AutoencoderKL`` then gets its own decoder."""
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    cfg = vae_config_from_shapes(shapes)
    sd = convert_vae(ldm, len(cfg.decoder.ch_mult))
    enc_config = vae_diffusers_config(cfg.encoder, cfg, scaling_factor=scaling_factor)

    def factory() -> Any:
        vae = new_module(AutoencoderKL, **enc_config)
        if cfg.decoder != cfg.encoder:
            levels = len(cfg.decoder.ch_mult)
            vae.decoder = new_module(
                Decoder,
                in_channels=cfg.z_channels,
                out_channels=3,
                up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=cfg.decoder.block_out_channels,
                layers_per_block=cfg.decoder.num_res_blocks,
                norm_num_groups=32,
                act_fn="silu",
                mid_block_add_attention=cfg.mid_attention,
            )
        return vae

    vae: AutoencoderKL = materialize(quiet_construction(factory), sd, device=device, dtype=dtype, what="VAE")
    return vae


def load_vae(
    path: PathLike, *, device: Device = "cpu", dtype: torch.dtype = torch.float32, scaling_factor: float = 0.18215
) -> AutoencoderKL:
    """A standalone VAE file (LDM layout, optionally under ``first_stage_model.``/``vae.``, or diffusers layout)."""
    p = Path(path)
    header = read_header(p)
    keys = list(header.keys())
    prefix = next((pre for pre in ("first_stage_model.", "vae.") if any(k.startswith(pre) for k in keys)), "")
    tensors = load_tensors(p, prefix=prefix, strip_prefix=True, device=device)
    tensors = {
        k: v for k, v in tensors.items() if k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv")
    }
    if not tensors:
        raise UnsupportedModelError(f"{p.name}: no VAE weights found")
    if "decoder.up_blocks.0.resnets.0.norm1.weight" in tensors:
        diff = normalize_diffusers_vae(tensors)
        levels = len({k.split(".")[2] for k in diff if k.startswith("decoder.up_blocks.")})
        cfg = vae_config_from_shapes(vae_diffusers_to_ldm({k: tuple(v.shape) for k, v in diff.items()}, levels))
        if cfg.decoder != cfg.encoder:
            raise UnsupportedModelError(f"{p.name}: diffusers VAEs with a different decoder width are not supported")
        enc_config = vae_diffusers_config(cfg.encoder, cfg, scaling_factor=scaling_factor)
        factory = quiet_construction(lambda: new_module(AutoencoderKL, **enc_config))
        vae: AutoencoderKL = materialize(factory, diff, device=device, dtype=dtype, what="VAE")
        return vae
    return build_vae(tensors, device=device, dtype=dtype, scaling_factor=scaling_factor)


# -------------------------------------------------------------------------------------------------- text encoders


def build_text_encoder(
    slot: TextEncoderSlot, tensors: Mapping[str, torch.Tensor], *, device: Device, dtype: torch.dtype
) -> TextEncoder:
    """``tensors`` are the encoder's weights with ``slot.prefix`` removed."""
    canonical = open_clip_to_canonical(tensors) if slot.layout == "open_clip" else clip_to_canonical(tensors)
    shapes = {k: tuple(v.shape) for k, v in canonical.items()}
    config_dict = clip_text_config(slot.name, shapes)
    with_projection = slot.name == "g"
    if with_projection and "text_projection.weight" not in canonical:
        raise ConversionError(f"text encoder {slot.name!r} ({slot.prefix}) has no text_projection")
    cls: type[TextEncoder] = CLIPTextModelWithProjection if with_projection else CLIPTextModel

    def factory() -> TextEncoder:
        config = CLIPTextConfig(**config_dict)
        config._attn_implementation = "sdpa"
        return cls(config)

    with torch.device("meta"):
        model_keys = list(quiet_construction(factory)().state_dict())
    sd = fit_clip_to_model(canonical, model_keys)
    model: TextEncoder = materialize(
        quiet_construction(factory), sd, device=device, dtype=dtype, what=f"text encoder {slot.name}"
    )
    return model


_STANDARD_WIDTHS = (768, 1024, 1280)

_CLIP_PREFIXES = (
    "",
    "transformer.",
    "cond_stage_model.transformer.",
    "cond_stage_model.model.",
    "conditioner.embedders.0.transformer.",
    "conditioner.embedders.0.model.",
    "conditioner.embedders.1.model.",
    "text_encoders.clip_l.transformer.",
    "text_encoders.clip_g.transformer.",
    "clip_l.transformer.",
    "clip_g.transformer.",
    "clip_h.transformer.",
    "clip_l.",
    "clip_g.",
    "model.",
)


def load_clip(
    path: PathLike, kind: str | None = None, *, device: Device = "cpu", dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """A standalone text encoder (CLIPLoader / DualCLIPLoader). ``kind`` is "l", "h" or "g" (None: by width)."""
    p = Path(path)
    header = read_header(p)
    shapes = header.shapes()
    slots = [s for pre in _CLIP_PREFIXES if (s := text_encoder_slot(shapes.keys(), shapes, pre)) is not None]
    if kind is not None:
        # Non-standard widths cannot be told apart by shape: the caller's kind decides.
        matching = [s if s.name == kind else replace(s, name=kind) for s in slots
                    if s.name == kind or s.hidden_size not in _STANDARD_WIDTHS]  # fmt: skip
        if not matching and slots:
            found = ", ".join(f"{s.name} ({s.hidden_size} wide)" for s in slots)
            raise UnsupportedModelError(f"{p.name}: asked for text encoder {kind!r}, the file holds {found}")
        slots = matching
    if not slots:
        raise UnsupportedModelError(f"{p.name}: no CLIP text encoder found")
    slot = slots[0]
    tensors = load_tensors(p, prefix=slot.prefix, strip_prefix=True, device=device)
    if slot.prefix == "" or slot.prefix in ("transformer.", "model."):
        tensors = {k: v for k, v in tensors.items() if _belongs_to_clip(k, slot)}
    return build_text_encoder(slot, tensors, device=device, dtype=dtype)


def _belongs_to_clip(key: str, slot: TextEncoderSlot) -> bool:
    if slot.layout == "open_clip":
        return key.split(".")[0] in (
            "token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "logit_scale",
            "attn_mask",
        )  # fmt: skip
    return key.split(".")[0] in (
        "text_model",
        "embeddings",
        "encoder",
        "final_layer_norm",
        "text_projection",
        "logit_scale",
    )


# ----------------------------------------------------------------------------------------------------- checkpoint


def load_checkpoint(
    path: PathLike,
    *,
    device: Device = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
    text_encoder_dtype: torch.dtype | None = None,
    load_vae_weights: bool = True,
    load_text_encoders: bool = True,
) -> LoadedCheckpoint:
    """CheckpointLoaderSimple: the UNet, VAE and text encoders of a single-file SD1/SD2/SDXL checkpoint."""
    p = Path(path)
    header = read_header(p)
    with SafetensorsFile(p) as f:
        arch = detect_architecture(header.shapes(), get_tensor=f.get)
    _require_supported(arch, p)
    unet_tensors = load_tensors(p, prefix=arch.unet_prefix, strip_prefix=True, device=device)
    unet, key_map = build_unet(arch, unet_tensors, device=device, dtype=dtype)
    del unet_tensors

    vae: AutoencoderKL | None = None
    if load_vae_weights and arch.vae_prefix is not None:
        vae_tensors = load_tensors(p, prefix=arch.vae_prefix, strip_prefix=True, device=device)
        vae = build_vae(vae_tensors, device=device, dtype=vae_dtype or dtype, scaling_factor=arch.latent_scale)
    elif load_vae_weights:
        log.warning("%s: the checkpoint has no VAE", p.name)

    encoders: dict[str, TextEncoder] = {}
    if load_text_encoders:
        for slot in arch.text_encoders:
            if slot.name in encoders:
                continue
            t = load_tensors(p, prefix=slot.prefix, strip_prefix=True, device=device)
            encoders[slot.name] = build_text_encoder(slot, t, device=device, dtype=text_encoder_dtype or dtype)
        missing = [n for n in arch.expected_text_encoders if n not in encoders]
        if missing:
            log.warning("%s: the checkpoint has no text encoder(s) %s", p.name, missing)
    return LoadedCheckpoint(
        path=p,
        architecture=arch,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        unet_key_map=key_map,
        metadata=dict(header.metadata),
    )
