"""Test models built locally: tiny random checkpoints in the real single-file layouts, and shape-only layouts of
full-size checkpoints for detection tests. Nothing is downloaded.

* `make_tiny_sd1_checkpoint` — an SD1.x single-file checkpoint (LDM keys): a small UNet that keeps
  ``model_channels`` 320 and context 768 (ComfyUI's SD15 detector requires both) and is shrunk by levels/res blocks
  with attention only where cheap; a VAE whose encoder has the standard width (ComfyUI hard-codes it) and a narrow
  decoder; and a full-shape CLIP-L text encoder (12 layers, 768 wide, vocab 49408, 77 positions: ~123M params). It is
  cached under ``$COMFYMESH_TEST_MODEL_CACHE`` (default ``<repo>/.cache/test-models/``), keyed by a hash of the
  generator parameters and written atomically.
* `make_tiny_sd2_checkpoint`, `make_tiny_sdxl_checkpoint` — SD2.x (eps or v) and SDXL base/refiner single-file
  checkpoints built the same way: the widths detection relies on (UNet ``model_channels`` 320/384, context
  1024/2048/1280, ADM 2816/2560; CLIP-L 768, OpenCLIP-H 1024, bigG 1280 with vocab 49408 and 77 positions) with
  three text-encoder layers and small UNets. The SD2 UNet keeps SD2's 4×2 res blocks (so ``output_blocks.11``,
  which the v-prediction test reads, exists) at 320 channels with attention only on the full-resolution level;
  the SDXL UNets have two levels with attention only on the second (as SDXL leaves its first level without).
* `make_tiny_lora`, `make_tiny_controlnet` — small files sized from a checkpoint.
* `shape_layout(name)` — key → shape dicts (no tensors) of SD1, SD2, SDXL base/refiner, SD3 and Flux checkpoints;
  `sd2_v_probe(v)` supplies the one weight SD2's v-prediction test reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from gpu_executor.diffusion.models.convert import UNetKeyMap, canonical_to_open_clip
from gpu_executor.diffusion.models.detection import SD2_V_PROBE_KEY, UNetConfig, detect_architecture
from gpu_executor.diffusion.models.ldm_layout import (
    CLIP_G,
    CLIP_H,
    CLIP_L,
    ClipShape,
    Layout,
    VaeSide,
    clip_open_clip_layout,
    clip_transformers_layout,
    controlnet_layout,
    prefixed,
    unet_layout,
    vae_layout,
)
from gpu_executor.diffusion.models.safetensors_file import read_header

GENERATOR_VERSION = 1
TINY_VAE_ENCODER = VaeSide(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)
TINY_VAE_DECODER = VaeSide(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=2)
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    d = Path(os.environ.get("COMFYMESH_TEST_MODEL_CACHE") or repo_root() / ".cache" / "test-models")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ----------------------------------------------------------------------------------------------------- configs


def _unet(
    mc: int,
    mult: tuple[int, ...],
    res: tuple[int, ...],
    depth: tuple[int, ...],
    depth_out: tuple[int, ...],
    mid: int,
    ctx: int,
    adm: int | None,
    linear: bool,
) -> UNetConfig:
    num_heads, num_head_channels = (8, -1) if ctx == 768 else (-1, 64)
    return UNetConfig(
        in_channels=4,
        out_channels=4,
        model_channels=mc,
        channel_mult=mult,
        num_res_blocks=res,
        transformer_depth=depth,
        transformer_depth_output=depth_out,
        transformer_depth_middle=mid,
        context_dim=ctx,
        adm_in_channels=adm,
        use_linear_in_transformer=linear,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
    )


_SD_DEPTH = ((1, 1, 1, 1, 1, 1, 0, 0), (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0))


def sd1_unet_config() -> UNetConfig:
    return _unet(320, (1, 2, 4, 4), (2, 2, 2, 2), *_SD_DEPTH, mid=1, ctx=768, adm=None, linear=False)


def sd2_unet_config() -> UNetConfig:
    return _unet(320, (1, 2, 4, 4), (2, 2, 2, 2), *_SD_DEPTH, mid=1, ctx=1024, adm=None, linear=True)


def sdxl_unet_config() -> UNetConfig:
    depth, depth_out = (0, 0, 2, 2, 10, 10), (0, 0, 0, 2, 2, 2, 10, 10, 10)
    return _unet(320, (1, 2, 4), (2, 2, 2), depth, depth_out, mid=10, ctx=2048, adm=2816, linear=True)


def sdxl_refiner_unet_config() -> UNetConfig:
    depth, depth_out = (0, 0, 4, 4, 4, 4, 0, 0), (0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0)
    return _unet(384, (1, 2, 4, 4), (2, 2, 2, 2), depth, depth_out, mid=4, ctx=1280, adm=2560, linear=True)


def tiny_sd1_unet_config(levels: int = 1) -> UNetConfig:
    """model_channels 320 / context 768 as SD1 requires; one res block per level. With one level the attention sits
    at full latent resolution (fine for small test images); with two it sits only on the downsampled level."""
    if levels == 1:
        return _unet(320, (1,), (1,), (1,), (1, 1), mid=1, ctx=768, adm=None, linear=False)
    if levels == 2:
        return _unet(320, (1, 2), (1, 1), (0, 1), (0, 0, 1, 1), mid=1, ctx=768, adm=None, linear=False)
    raise ValueError("levels must be 1 or 2")


def tiny_sd2_unet_config() -> UNetConfig:
    """SD2's detection widths (320 channels, context 1024, linear projections) and its 4 levels × 2 res blocks, so
    the 12 output blocks and the v-prediction probe (``output_blocks.11.1...``) are where SD2 has them; every level
    is 320 wide and only the full-resolution level (input and output) has attention, one block deep."""
    depth, depth_out = (1, 1, 0, 0, 0, 0, 0, 0), (1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return _unet(320, (1, 1, 1, 1), (2, 2, 2, 2), depth, depth_out, mid=1, ctx=1024, adm=None, linear=True)


def tiny_sdxl_unet_config(refiner: bool = False) -> UNetConfig:
    """SDXL base (320 channels, context 2048, ADM 2816) or refiner (384, 1280, 2560) widths; two levels of one res
    block at the base width, attention (depth 1) on the second level and the middle block only."""
    mc, ctx, adm = (384, 1280, 2560) if refiner else (320, 2048, 2816)
    return _unet(mc, (1, 1), (1, 1), (0, 1), (0, 0, 1, 1), mid=1, ctx=ctx, adm=adm, linear=True)


TINY_TEXT_LAYERS = 3
TINY_CLIP_L = replace(CLIP_L, num_layers=TINY_TEXT_LAYERS)
TINY_CLIP_H = replace(CLIP_H, num_layers=TINY_TEXT_LAYERS)
TINY_CLIP_G = replace(CLIP_G, num_layers=TINY_TEXT_LAYERS)


# -------------------------------------------------------------------------------------------------- tensor fill


def _is_embedding(key: str) -> bool:
    return key.endswith(("token_embedding.weight", "position_embedding.weight", "positional_embedding"))


def fill_layout(
    layout: Mapping[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Deterministic random tensors for a layout: weights ~ N(0, 1/fan_in), norms ~ 1, biases small, CLIP position
    ids as integers (as real checkpoints store them)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(layout):
        shape = layout[key]
        if key.endswith("position_ids"):
            out[key] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
            continue
        if len(shape) == 0:
            t = torch.tensor(4.6052 if key.endswith("logit_scale") else 1.0)
        elif _is_embedding(key):
            t = torch.randn(shape, generator=g) * 0.02
        elif len(shape) == 1 and key.endswith(".weight"):
            t = 1.0 + torch.randn(shape, generator=g) * 0.02
        elif len(shape) == 1:
            t = torch.randn(shape, generator=g) * 0.02
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(max(1, math.prod(shape[1:])))
        out[key] = t.to(dtype).contiguous()
    return out


def _schedule_buffers() -> dict[str, torch.Tensor]:
    """The scaled-linear schedule buffers SD1 checkpoints carry at the top level (ignored by loaders)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(), "model_ema.decay": torch.tensor(0.9999)}


def _params_key(params: Mapping[str, object]) -> str:
    blob = json.dumps({**params, "generator_version": GENERATOR_VERSION}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _layout_digest(layout: Layout) -> str:
    """Part of the cache key of the SD2/SDXL generators: a change to their layouts builds a new file."""
    return hashlib.sha256(json.dumps(sorted(layout.items())).encode()).hexdigest()[:16]


def _atomic_save(tensors: dict[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _deliver(cached: Path, path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        return cached
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A copy, not a link: whoever receives it may modify it; the cached file must stay intact.
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(cached, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# ------------------------------------------------------------------------------------------------- checkpoints


def tiny_sd1_layout(levels: int = 1) -> Layout:
    layout: Layout = {}
    layout.update(prefixed(unet_layout(tiny_sd1_unet_config(levels)), "model.diffusion_model."))
    layout.update(prefixed(vae_layout(TINY_VAE_ENCODER, TINY_VAE_DECODER), "first_stage_model."))
    layout.update(prefixed(clip_transformers_layout(CLIP_L), "cond_stage_model.transformer."))
    return layout


def make_tiny_sd1_checkpoint(
    path: str | os.PathLike[str] | None = None, seed: int = 0, *, levels: int = 1, dtype: str = "fp16"
) -> Path:
    """A tiny random SD1.x checkpoint in the real single-file layout (see the module docstring).

    Built once per parameter set into the cache; ``path`` (if given) receives a copy of it. Returns the path of the
    file to use (``path`` or the cached file, which must not be modified).
    """
    params = {"kind": "sd1", "seed": seed, "levels": levels, "dtype": dtype}
    cached = cache_dir() / f"tiny-sd1-l{levels}-s{seed}-{dtype}-{_params_key(params)}.safetensors"
    if not cached.exists():
        tensors = fill_layout(tiny_sd1_layout(levels), seed, DTYPES[dtype])
        tensors.update(_schedule_buffers())
        _atomic_save(tensors, cached, {"format": "pt", "comfymesh.test_model": json.dumps(params)})
    return _deliver(cached, path)


def tiny_sd2_layout() -> Layout:
    layout: Layout = {}
    layout.update(prefixed(unet_layout(tiny_sd2_unet_config()), "model.diffusion_model."))
    layout.update(prefixed(vae_layout(TINY_VAE_ENCODER, TINY_VAE_DECODER), "first_stage_model."))
    layout.update(prefixed(clip_open_clip_layout(TINY_CLIP_H), "cond_stage_model.model."))
    return layout


def tiny_sdxl_layout(refiner: bool = False) -> Layout:
    """SGM layout: CLIP-L (transformers) at ``conditioner.embedders.0`` and bigG (OpenCLIP) at ``embedders.1``; the
    refiner has only bigG, at ``embedders.0``."""
    layout: Layout = {}
    layout.update(prefixed(unet_layout(tiny_sdxl_unet_config(refiner)), "model.diffusion_model."))
    layout.update(prefixed(vae_layout(TINY_VAE_ENCODER, TINY_VAE_DECODER), "first_stage_model."))
    if refiner:
        layout.update(prefixed(clip_open_clip_layout(TINY_CLIP_G), "conditioner.embedders.0.model."))
    else:
        layout.update(prefixed(clip_transformers_layout(TINY_CLIP_L), "conditioner.embedders.0.transformer."))
        layout.update(prefixed(clip_open_clip_layout(TINY_CLIP_G), "conditioner.embedders.1.model."))
    return layout


def make_tiny_sd2_checkpoint(
    path: str | os.PathLike[str] | None = None, seed: int = 0, *, v_prediction: bool = False, dtype: str = "fp16"
) -> Path:
    """A tiny random SD2.x checkpoint (OpenCLIP-H text encoder under ``cond_stage_model.model.``).

    The eps and v files of one seed hold the same tensors except ComfyUI's v-prediction probe weight, which gets a
    spread above (v) or below (eps) the detection threshold. Cached and delivered like `make_tiny_sd1_checkpoint`.
    """
    layout = tiny_sd2_layout()
    params = {"kind": "sd2", "seed": seed, "v_prediction": v_prediction, "dtype": dtype}
    params["layout"] = _layout_digest(layout)
    pred = "v" if v_prediction else "eps"
    cached = cache_dir() / f"tiny-sd2-{pred}-s{seed}-{dtype}-{_params_key(params)}.safetensors"
    if not cached.exists():
        tensors = fill_layout(layout, seed, DTYPES[dtype])
        tensors.update({k: v.to(DTYPES[dtype]) for k, v in sd2_v_probe(v_prediction, seed=seed).items()})
        tensors.update(_schedule_buffers())
        _atomic_save(tensors, cached, {"format": "pt", "comfymesh.test_model": json.dumps(params)})
    return _deliver(cached, path)


def make_tiny_sdxl_checkpoint(
    path: str | os.PathLike[str] | None = None, seed: int = 0, *, refiner: bool = False, dtype: str = "fp16"
) -> Path:
    """A tiny random SDXL base (CLIP-L + bigG) or refiner (bigG only) checkpoint in the SGM single-file layout.
    Cached and delivered like `make_tiny_sd1_checkpoint`."""
    kind = "sdxl_refiner" if refiner else "sdxl"
    layout = tiny_sdxl_layout(refiner)
    params = {"kind": kind, "seed": seed, "dtype": dtype, "layout": _layout_digest(layout)}
    cached = cache_dir() / f"tiny-{kind}-s{seed}-{dtype}-{_params_key(params)}.safetensors"
    if not cached.exists():
        tensors = fill_layout(layout, seed, DTYPES[dtype])
        _atomic_save(tensors, cached, {"format": "pt", "comfymesh.test_model": json.dumps(params)})
    return _deliver(cached, path)


def make_tiny_lora(
    path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], rank: int = 4, seed: int = 0,
    *, alpha: float | None = None,
) -> Path:  # fmt: skip
    """A kohya-format LoRA for the checkpoint at ``checkpoint_path``: attention linears under diffusers names
    (``lora_unet_down_blocks_0_attentions_0_...``), a 1×1 and a 3×3 conv under LDM names (``lora_unet_input_blocks_1_
    ...``), and CLIP attention/MLP layers (``lora_te_text_model_encoder_layers_N_...``), each with an ``alpha``."""
    header = read_header(checkpoint_path)
    shapes = header.shapes()
    arch = detect_architecture(shapes)
    if arch.unet is None:
        raise ValueError("the checkpoint has no UNet")
    km = UNetKeyMap(arch.unet)
    unet_prefix = arch.unet_prefix
    g = torch.Generator().manual_seed(seed)
    a = float(rank) / 2 if alpha is None else alpha
    out: dict[str, torch.Tensor] = {}

    def add(name: str, weight_shape: tuple[int, ...]) -> None:
        if len(weight_shape) == 2:
            down = torch.randn((rank, weight_shape[1]), generator=g) * 0.1
            up = torch.randn((weight_shape[0], rank), generator=g) * 0.1
        else:
            down = torch.randn((rank, weight_shape[1], weight_shape[2], weight_shape[3]), generator=g) * 0.1
            up = torch.randn((weight_shape[0], rank, 1, 1), generator=g) * 0.1
        out[f"{name}.lora_down.weight"] = down.half()
        out[f"{name}.lora_up.weight"] = up.half()
        out[f"{name}.alpha"] = torch.tensor(a)

    for key, shape in sorted(shapes.items()):
        if not key.startswith(unet_prefix) or not key.endswith(".weight"):
            continue
        ldm = key[len(unet_prefix) : -len(".weight")]
        if any(f".{n}." in ldm + "." for n in ("to_q", "to_k", "to_v")) or ldm.endswith("to_out.0"):
            diff = km.to_diffusers(ldm + ".weight")[: -len(".weight")]
            add("lora_unet_" + diff.replace(".", "_"), shape)
        elif ldm.endswith(("input_blocks.1.1.proj_in", "input_blocks.1.0.in_layers.2")):
            add("lora_unet_" + ldm.replace(".", "_"), shape)
    for slot in arch.text_encoders:
        for layer in (0, slot.num_layers - 1):
            for sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                        "mlp.fc2"):  # fmt: skip
                wkey = f"{slot.prefix}text_model.encoder.layers.{layer}.{sub}.weight"
                if wkey in shapes:
                    add(f"lora_te_text_model_encoder_layers_{layer}_{sub.replace('.', '_')}", shapes[wkey])
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(a),
        "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}.get(arch.family, ""),
    }
    dest = Path(path)
    _atomic_save(out, dest, meta)
    return dest


def make_tiny_controlnet(
    path: str | os.PathLike[str],
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    levels: int = 1,
    seed: int = 0,
    layout: str = "ldm",
    dtype: str = "fp16",
) -> Path:
    """An LDM-layout (``control_model.*``) or diffusers-layout ControlNet matching the tiny SD1 UNet (or the UNet of
    ``checkpoint_path``). Zero convolutions are random rather than zero so residuals are non-trivial."""
    if checkpoint_path is not None:
        arch = detect_architecture(read_header(checkpoint_path).shapes())
        if arch.unet is None:
            raise ValueError("the checkpoint has no UNet")
        cfg = arch.unet
    else:
        cfg = tiny_sd1_unet_config(levels)
    ldm = controlnet_layout(cfg)
    tensors = fill_layout(ldm, seed, DTYPES[dtype])
    if layout == "ldm":
        tensors = {"control_model." + k: v for k, v in tensors.items()}
    elif layout == "diffusers":
        tensors = UNetKeyMap(cfg, controlnet=True).convert(tensors)
    else:
        raise ValueError("layout must be 'ldm' or 'diffusers'")
    dest = Path(path)
    _atomic_save(tensors, dest, {"format": "pt"})
    return dest


def make_open_clip_text_encoder(
    path: str | os.PathLike[str], shape: ClipShape, seed: int = 0, *, prefix: str = ""
) -> Path:
    """A standalone text encoder in the OpenCLIP layout (for CLIPLoader tests)."""
    canonical = fill_layout(clip_transformers_layout(shape, position_ids=False), seed)
    tensors = {prefix + k: v for k, v in canonical_to_open_clip(canonical).items()}
    dest = Path(path)
    _atomic_save(tensors, dest, {"format": "pt"})
    return dest


# --------------------------------------------------------------------------------------------- shape-only layouts


def _vae(z: int = 4, prefix: str = "first_stage_model.") -> Layout:
    return prefixed(vae_layout(z_channels=z), prefix)


def sd1_layout() -> Layout:
    return {
        **prefixed(unet_layout(sd1_unet_config()), "model.diffusion_model."),
        **_vae(),
        **prefixed(clip_transformers_layout(CLIP_L), "cond_stage_model.transformer."),
    }


def sd2_layout() -> Layout:
    return {
        **prefixed(unet_layout(sd2_unet_config()), "model.diffusion_model."),
        **_vae(),
        **prefixed(clip_open_clip_layout(CLIP_H), "cond_stage_model.model."),
    }


def sdxl_layout() -> Layout:
    return {
        **prefixed(unet_layout(sdxl_unet_config()), "model.diffusion_model."),
        **_vae(),
        **prefixed(clip_transformers_layout(CLIP_L), "conditioner.embedders.0.transformer."),
        **prefixed(clip_open_clip_layout(CLIP_G), "conditioner.embedders.1.model."),
    }


def sdxl_refiner_layout() -> Layout:
    return {
        **prefixed(unet_layout(sdxl_refiner_unet_config()), "model.diffusion_model."),
        **_vae(),
        **prefixed(clip_open_clip_layout(CLIP_G), "conditioner.embedders.0.model."),
    }


def _t5_keys(prefix: str) -> Layout:
    out: Layout = {prefix + "shared.weight": (32128, 4096)}
    for i in range(24):
        p = f"{prefix}encoder.block.{i}.layer."
        for n in ("q", "k", "v", "o"):
            out[f"{p}0.SelfAttention.{n}.weight"] = (4096, 4096)
        out[f"{p}0.layer_norm.weight"] = (4096,)
        out[f"{p}1.DenseReluDense.wi_0.weight"] = (10240, 4096)
        out[f"{p}1.DenseReluDense.wi_1.weight"] = (10240, 4096)
        out[f"{p}1.DenseReluDense.wo.weight"] = (4096, 10240)
        out[f"{p}1.layer_norm.weight"] = (4096,)
    out[prefix + "encoder.final_layer_norm.weight"] = (4096,)
    return out


def sd3_layout(depth: int = 24) -> Layout:
    """SD3-medium-style MMDiT single file (with CLIP-L, CLIP-G and T5-XXL under ``text_encoders.``)."""
    h = depth * 64
    p = "model.diffusion_model."
    out: Layout = {
        p + "x_embedder.proj.weight": (h, 16, 2, 2),
        p + "x_embedder.proj.bias": (h,),
        p + "pos_embed": (1, 36864, h),
        p + "t_embedder.mlp.0.weight": (h, 256),
        p + "t_embedder.mlp.2.weight": (h, h),
        p + "y_embedder.mlp.0.weight": (h, 2048),
        p + "y_embedder.mlp.2.weight": (h, h),
        p + "context_embedder.weight": (h, 4096),
        p + "final_layer.linear.weight": (64, h),
        p + "final_layer.adaLN_modulation.1.weight": (2 * h, h),
    }
    for i in range(depth):
        b = f"{p}joint_blocks.{i}."
        for side in ("context_block", "x_block"):
            out[f"{b}{side}.attn.qkv.weight"] = (3 * h, h)
            out[f"{b}{side}.attn.proj.weight"] = (h, h)
            out[f"{b}{side}.adaLN_modulation.1.weight"] = (6 * h, h)
            out[f"{b}{side}.mlp.fc1.weight"] = (4 * h, h)
            out[f"{b}{side}.mlp.fc2.weight"] = (h, 4 * h)
    out.update(_vae(16))
    out.update(prefixed(clip_transformers_layout(ClipShape(projection_dim=768)), "text_encoders.clip_l.transformer."))
    out.update(prefixed(clip_transformers_layout(CLIP_G), "text_encoders.clip_g.transformer."))
    out.update(_t5_keys("text_encoders.t5xxl.transformer."))
    return out


def flux_layout(*, guidance: bool = True, depth: int = 19, depth_single: int = 38) -> Layout:
    """Flux.1 (dev with guidance embedding, schnell without) all-in-one file: ``model.diffusion_model.``, ``vae.``,
    CLIP-L and T5-XXL under ``text_encoders.``."""
    h = 3072
    p = "model.diffusion_model."
    out: Layout = {
        p + "img_in.weight": (h, 64),
        p + "time_in.in_layer.weight": (h, 256),
        p + "time_in.out_layer.weight": (h, h),
        p + "vector_in.in_layer.weight": (h, 768),
        p + "txt_in.weight": (h, 4096),
        p + "final_layer.linear.weight": (64, h),
        p + "final_layer.adaLN_modulation.1.weight": (2 * h, h),
    }
    if guidance:
        out[p + "guidance_in.in_layer.weight"] = (h, 256)
    for i in range(depth):
        b = f"{p}double_blocks.{i}."
        for side in ("img", "txt"):
            out[f"{b}{side}_attn.qkv.weight"] = (3 * h, h)
            out[f"{b}{side}_attn.norm.query_norm.scale"] = (128,)
            out[f"{b}{side}_attn.norm.key_norm.scale"] = (128,)
            out[f"{b}{side}_attn.proj.weight"] = (h, h)
            out[f"{b}{side}_mlp.0.weight"] = (4 * h, h)
            out[f"{b}{side}_mlp.2.weight"] = (h, 4 * h)
            out[f"{b}{side}_mod.lin.weight"] = (6 * h, h)
    for i in range(depth_single):
        b = f"{p}single_blocks.{i}."
        out[b + "linear1.weight"] = (3 * h + 4 * h, h)
        out[b + "linear2.weight"] = (h, h + 4 * h)
        out[b + "norm.query_norm.scale"] = (128,)
        out[b + "norm.key_norm.scale"] = (128,)
        out[b + "modulation.lin.weight"] = (3 * h, h)
    out.update(_vae(16, "vae."))
    out.update(prefixed(clip_transformers_layout(ClipShape(projection_dim=768)), "text_encoders.clip_l.transformer."))
    out.update(_t5_keys("text_encoders.t5xxl.transformer."))
    return out


SHAPE_LAYOUTS: Mapping[str, Callable[[], Layout]] = {
    "sd1": sd1_layout,
    "sd2": sd2_layout,
    "sdxl": sdxl_layout,
    "sdxl_refiner": sdxl_refiner_layout,
    "sd3": sd3_layout,
    "flux": flux_layout,
    "flux_schnell": lambda: flux_layout(guidance=False),
}


def shape_layout(name: str) -> Layout:
    """Key → shape dict of a full-size checkpoint of family ``name`` (see `SHAPE_LAYOUTS`)."""
    return SHAPE_LAYOUTS[name]()


def sd2_v_probe(v: bool, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weight ComfyUI's SD2 v-prediction test reads, with a spread typical of a 768-v (std ≈ 0.2) or a base
    eps model (std ≈ 0.03)."""
    g = torch.Generator().manual_seed(seed)
    std = 0.2 if v else 0.03
    return {"model.diffusion_model." + SD2_V_PROBE_KEY: torch.randn(320, generator=g) * std}
