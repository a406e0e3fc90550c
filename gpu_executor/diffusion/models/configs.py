"""Local model configurations: diffusers ``UNet2DConditionModel``/``AutoencoderKL``/``ControlNetModel`` configs sized
from what detection found, and transformers ``CLIPTextConfig``s for the three text encoders SD models use.

No configuration is fetched from a hub. The CLIP configs are shipped here as Python dicts (the same values as the
configs ComfyUI ships: CLIP-L for SD1/SDXL, OpenCLIP ViT-H for SD2, OpenCLIP bigG for SDXL) and are resized from a
checkpoint's shapes when they differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpu_executor.diffusion.models.detection import SD2, SDXL, SDXL_REFINER, UNetConfig
from gpu_executor.diffusion.models.errors import UnsupportedModelError
from gpu_executor.diffusion.models.ldm_layout import VaeSide

# transformers CLIPTextConfig values. eos_token_id 49407 makes transformers pool at the first end token, which is
# what ComfyUI does for all three (its own configs say 2 for H/bigG, which selects argmax(token id) = the same token
# as long as nothing above 49407 appears).
CLIP_TEXT_CONFIGS: Mapping[str, Mapping[str, Any]] = {
    "l": {
        "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "projection_dim": 768, "bos_token_id": 49406, "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "h": {
        "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "projection_dim": 1024, "bos_token_id": 49406, "eos_token_id": 49407,
        "pad_token_id": 0,
    },
    "g": {
        "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
        "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "projection_dim": 1280, "bos_token_id": 49406, "eos_token_id": 49407,
        "pad_token_id": 0,
    },
}  # fmt: skip


def clip_text_config(kind: str, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """The shipped config for ``kind`` ("l", "h", "g"), resized to ``shapes`` (canonical ``text_model.*`` keys)."""
    if kind not in CLIP_TEXT_CONFIGS:
        raise UnsupportedModelError(f"unknown text encoder kind {kind!r} (expected one of l, h, g)")
    cfg = dict(CLIP_TEXT_CONFIGS[kind])
    if shapes:
        emb = shapes.get("text_model.embeddings.token_embedding.weight")
        pos = shapes.get("text_model.embeddings.position_embedding.weight")
        fc1 = shapes.get("text_model.encoder.layers.0.mlp.fc1.weight")
        proj = shapes.get("text_projection.weight")
        layers = 0
        while f"text_model.encoder.layers.{layers}.layer_norm1.weight" in shapes:
            layers += 1
        if emb is not None:
            cfg["vocab_size"], hidden = emb
            if hidden != cfg["hidden_size"]:
                cfg["hidden_size"] = hidden
                cfg["num_attention_heads"] = max(1, hidden // 64)
        if pos is not None:
            cfg["max_position_embeddings"] = pos[0]
        if fc1 is not None:
            cfg["intermediate_size"] = fc1[0]
        if proj is not None:
            cfg["projection_dim"] = proj[0]
        if layers:
            cfg["num_hidden_layers"] = layers
    return cfg


def unet_diffusers_config(cfg: UNetConfig, family: str | None = None) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config equivalent to the LDM UNet ``cfg``.

    Raises `UnsupportedModelError` for layouts diffusers' UNet cannot express (attention on only some res blocks of
    a level, a middle-block depth that differs from an attention-bearing last level).
    """
    levels = cfg.levels
    boc = list(cfg.block_out_channels)
    in_depths = cfg.depth_per_level()
    out_depths = cfg.output_depth_per_level()
    down_types: list[str] = []
    layers_per_level: list[int | tuple[int, ...]] = []
    for level, depths in enumerate(in_depths):
        if all(d > 0 for d in depths) and depths:
            down_types.append("CrossAttnDownBlock2D")
            layers_per_level.append(depths[0] if len(set(depths)) == 1 else tuple(depths))
        elif not any(depths):
            down_types.append("DownBlock2D")
            layers_per_level.append(1)
        else:
            raise UnsupportedModelError(f"level {level} has attention on only some res blocks: {depths}")
    up_types: list[str] = []
    reverse_layers: list[tuple[int, ...]] = []
    for level in reversed(range(levels)):
        depths = out_depths[level]
        if all(d > 0 for d in depths):
            up_types.append("CrossAttnUpBlock2D")
        elif not any(depths):
            up_types.append("UpBlock2D")
        else:
            raise UnsupportedModelError(f"output level {level} has attention on only some blocks: {depths}")
        reverse_layers.append(tuple(d if d > 0 else 1 for d in depths))

    mid = cfg.transformer_depth_middle
    if mid >= 0:
        mid_type: str | None = "UNetMidBlock2DCrossAttn"
        last = layers_per_level[-1]
        if down_types[-1] == "DownBlock2D":
            layers_per_level[-1] = mid
        elif last != mid:
            raise UnsupportedModelError(f"middle block depth {mid} differs from the last level's depth {last}")
    elif mid == -1:
        mid_type = "UNetMidBlock2D"
    else:
        mid_type = None

    if cfg.num_heads > 0:
        heads: int | tuple[int, ...] = cfg.num_heads
    else:
        heads = tuple(c // cfg.num_head_channels for c in boc)

    default_reverse = [
        tuple([d if isinstance(d, int) else 0] * (cfg.num_res_blocks[lv] + 1))
        for lv, d in reversed(list(enumerate(layers_per_level)))
    ]
    out: dict[str, Any] = {
        "sample_size": {SDXL: 128, SDXL_REFINER: 128, SD2: 96}.get(family or "", 64),
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": tuple(down_types),
        "up_block_types": tuple(up_types),
        "mid_block_type": mid_type,
        "block_out_channels": tuple(boc),
        "layers_per_block": cfg.num_res_blocks[0] if len(set(cfg.num_res_blocks)) == 1 else tuple(cfg.num_res_blocks),
        "cross_attention_dim": cfg.context_dim or 768,
        "attention_head_dim": heads,
        "use_linear_projection": cfg.use_linear_in_transformer,
        "transformer_layers_per_block": (
            layers_per_level[0] if len(set(layers_per_level)) == 1 else tuple(layers_per_level)
        ),
        "norm_num_groups": 32,
        "upcast_attention": family == SD2,
    }
    if any(isinstance(x, tuple) for x in layers_per_level) or [list(r) for r in reverse_layers] != [
        list(r) for r in default_reverse
    ]:
        out["reverse_transformer_layers_per_block"] = tuple(reverse_layers)
        if not isinstance(out["transformer_layers_per_block"], tuple):
            out["transformer_layers_per_block"] = tuple(layers_per_level)
    if cfg.adm_in_channels is not None:
        if family not in (SDXL, SDXL_REFINER):
            raise UnsupportedModelError(f"ADM input of width {cfg.adm_in_channels} outside SDXL is not supported")
        out.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=cfg.adm_in_channels,
        )
    return out


def controlnet_diffusers_config(
    cfg: UNetConfig, family: str | None, *, hint_in: int, hint_channels: tuple[int, ...]
) -> dict[str, Any]:
    """A diffusers ``ControlNetModel`` config for an LDM ControlNet with UNet-encoder configuration ``cfg``."""
    unet = unet_diffusers_config(_with_dummy_outputs(cfg), family)
    if isinstance(unet["layers_per_block"], tuple):
        raise UnsupportedModelError("ControlNets with different res-block counts per level are not supported")
    tl = unet["transformer_layers_per_block"]
    if isinstance(tl, tuple) and any(isinstance(x, tuple) for x in tl):
        raise UnsupportedModelError("ControlNets with per-block transformer depths are not supported")
    out: dict[str, Any] = {
        "in_channels": cfg.in_channels,
        "conditioning_channels": hint_in,
        "down_block_types": unet["down_block_types"],
        "mid_block_type": unet["mid_block_type"] or "UNetMidBlock2D",
        "block_out_channels": unet["block_out_channels"],
        "layers_per_block": unet["layers_per_block"],
        "cross_attention_dim": unet["cross_attention_dim"],
        "attention_head_dim": unet["attention_head_dim"],
        "use_linear_projection": unet["use_linear_projection"],
        "transformer_layers_per_block": tl,
        "upcast_attention": unet["upcast_attention"],
        "conditioning_embedding_out_channels": hint_channels,
    }
    for key in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
        if key in unet:
            out[key] = unet[key]
    return out


def _with_dummy_outputs(cfg: UNetConfig) -> UNetConfig:
    """A ControlNet has no output blocks; give it mirror-image ones so the UNet config helper applies."""
    depths = cfg.depth_per_level()
    out: list[int] = []
    for level in range(cfg.levels):
        d = depths[level][0] if depths[level] else 0
        out.extend([d] * (cfg.num_res_blocks[level] + 1))
    return replace(cfg, transformer_depth_output=tuple(out))


@dataclass(frozen=True)
class VaeConfig:
    encoder: VaeSide
    decoder: VaeSide
    z_channels: int = 4
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_attention: bool = True


def vae_config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> VaeConfig:
    """Derive the LDM AutoencoderKL configuration from (prefix-stripped) LDM VAE keys and shapes."""
    try:
        enc_ch = shapes["encoder.conv_in.weight"][0]
        dec_in = shapes["decoder.conv_in.weight"]
    except KeyError as exc:
        raise UnsupportedModelError(f"not an LDM VAE: missing {exc.args[0]}") from exc
    z = dec_in[1]
    enc_levels = 0
    enc_mult: list[int] = []
    while f"encoder.down.{enc_levels}.block.0.conv1.weight" in shapes:
        enc_mult.append(shapes[f"encoder.down.{enc_levels}.block.0.conv2.weight"][0] // enc_ch)
        enc_levels += 1
    enc_res = 0
    while f"encoder.down.0.block.{enc_res}.conv1.weight" in shapes:
        enc_res += 1
    dec_levels = 0
    dec_ch_per_level: list[int] = []
    while f"decoder.up.{dec_levels}.block.0.conv1.weight" in shapes:
        dec_ch_per_level.append(shapes[f"decoder.up.{dec_levels}.block.0.conv2.weight"][0])
        dec_levels += 1
    dec_res = 0
    while f"decoder.up.0.block.{dec_res}.conv1.weight" in shapes:
        dec_res += 1
    if not enc_levels or not dec_levels:
        raise UnsupportedModelError("not an LDM VAE: no encoder.down / decoder.up blocks")
    dec_ch = dec_ch_per_level[0]
    if any(c % dec_ch for c in dec_ch_per_level):
        raise UnsupportedModelError(f"decoder widths {dec_ch_per_level} are not multiples of {dec_ch}")
    return VaeConfig(
        encoder=VaeSide(ch=enc_ch, ch_mult=tuple(enc_mult), num_res_blocks=enc_res),
        decoder=VaeSide(ch=dec_ch, ch_mult=tuple(c // dec_ch for c in dec_ch_per_level), num_res_blocks=dec_res - 1),
        z_channels=z,
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
        mid_attention="decoder.mid.attn_1.q.weight" in shapes or "decoder.mid.attn_1.to_q.weight" in shapes,
    )


def vae_diffusers_config(side: VaeSide, cfg: VaeConfig, *, scaling_factor: float = 0.18215) -> dict[str, Any]:
    levels = len(side.ch_mult)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": side.block_out_channels,
        "layers_per_block": side.num_res_blocks,
        "latent_channels": cfg.z_channels,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": scaling_factor,
        "use_quant_conv": cfg.use_quant_conv,
        "use_post_quant_conv": cfg.use_post_quant_conv,
        "mid_block_add_attention": cfg.mid_attention,
    }
