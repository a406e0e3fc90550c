"""Key → shape layouts of the original (LDM/SGM/OpenCLIP) single-file formats, generated from configurations.

These enumerate exactly the weights an LDM ``openaimodel.UNetModel``, ``cldm.ControlNet``, the LDM ``AutoencoderKL``
and CLIP text encoders (transformers and OpenCLIP layouts) store, in their own key names. They are used to build
tiny test checkpoints and the shape-only layouts of full-size checkpoints for detection tests; the loader verifies
them independently by converting to diffusers/transformers names and loading with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpu_executor.diffusion.models.detection import UNetConfig

Layout = dict[str, tuple[int, ...]]


def _norm(out: Layout, key: str, c: int) -> None:
    out[key + ".weight"] = (c,)
    out[key + ".bias"] = (c,)


def _conv(out: Layout, key: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
    out[key + ".weight"] = (cout, cin, k, k)
    if bias:
        out[key + ".bias"] = (cout,)


def _linear(out: Layout, key: str, cout: int, cin: int, bias: bool = True) -> None:
    out[key + ".weight"] = (cout, cin)
    if bias:
        out[key + ".bias"] = (cout,)


def _resblock(out: Layout, p: str, cin: int, cout: int, emb: int) -> None:
    _norm(out, p + "in_layers.0", cin)
    _conv(out, p + "in_layers.2", cout, cin, 3)
    _linear(out, p + "emb_layers.1", cout, emb)
    _norm(out, p + "out_layers.0", cout)
    _conv(out, p + "out_layers.3", cout, cout, 3)
    if cin != cout:
        _conv(out, p + "skip_connection", cout, cin, 1)


def _transformer(out: Layout, p: str, c: int, depth: int, context_dim: int, linear: bool) -> None:
    _norm(out, p + "norm", c)
    for name in ("proj_in", "proj_out"):
        if linear:
            _linear(out, p + name, c, c)
        else:
            _conv(out, p + name, c, c, 1)
    for d in range(depth):
        b = f"{p}transformer_blocks.{d}."
        for attn, kv in (("attn1", c), ("attn2", context_dim)):
            _linear(out, f"{b}{attn}.to_q", c, c, bias=False)
            _linear(out, f"{b}{attn}.to_k", c, kv, bias=False)
            _linear(out, f"{b}{attn}.to_v", c, kv, bias=False)
            _linear(out, f"{b}{attn}.to_out.0", c, c)
        _linear(out, f"{b}ff.net.0.proj", 8 * c, c)
        _linear(out, f"{b}ff.net.2", c, 4 * c)
        for n in ("norm1", "norm2", "norm3"):
            _norm(out, b + n, c)


def _unet_encoder(out: Layout, cfg: UNetConfig) -> tuple[list[int], int]:
    """time embedding, label embedding, input blocks and middle block (shared by the UNet and ControlNet)."""
    mc = cfg.model_channels
    emb = 4 * mc
    ctx = cfg.context_dim or 768
    _linear(out, "time_embed.0", emb, mc)
    _linear(out, "time_embed.2", emb, emb)
    if cfg.adm_in_channels is not None:
        _linear(out, "label_emb.0.0", emb, cfg.adm_in_channels)
        _linear(out, "label_emb.0.2", emb, emb)
    _conv(out, "input_blocks.0.0", mc, cfg.in_channels, 3)
    chans = [mc]
    ch = mc
    n = 1
    depths = cfg.depth_per_level()
    for level, mult in enumerate(cfg.channel_mult):
        for j in range(cfg.num_res_blocks[level]):
            _resblock(out, f"input_blocks.{n}.0.", ch, mult * mc, emb)
            ch = mult * mc
            if depths[level][j] > 0:
                _transformer(out, f"input_blocks.{n}.1.", ch, depths[level][j], ctx, cfg.use_linear_in_transformer)
            chans.append(ch)
            n += 1
        if level != cfg.levels - 1:
            _conv(out, f"input_blocks.{n}.0.op", ch, ch, 3)
            chans.append(ch)
            n += 1
    if cfg.transformer_depth_middle >= -1:
        _resblock(out, "middle_block.0.", ch, ch, emb)
        if cfg.transformer_depth_middle >= 0:
            _transformer(out, "middle_block.1.", ch, cfg.transformer_depth_middle, ctx, cfg.use_linear_in_transformer)
            _resblock(out, "middle_block.2.", ch, ch, emb)
    return chans, ch


def unet_layout(cfg: UNetConfig) -> Layout:
    """Keys (without the ``model.diffusion_model.`` prefix) and shapes of an LDM UNet."""
    out: Layout = {}
    chans, ch = _unet_encoder(out, cfg)
    mc = cfg.model_channels
    emb = 4 * mc
    ctx = cfg.context_dim or 768
    out_depths = cfg.output_depth_per_level()
    n = 0
    for level in reversed(range(cfg.levels)):
        mult = cfg.channel_mult[level]
        for j in range(cfg.num_res_blocks[level] + 1):
            ich = chans.pop()
            _resblock(out, f"output_blocks.{n}.0.", ch + ich, mult * mc, emb)
            ch = mult * mc
            d = out_depths[level][j]
            if d > 0:
                _transformer(out, f"output_blocks.{n}.1.", ch, d, ctx, cfg.use_linear_in_transformer)
            if level and j == cfg.num_res_blocks[level]:
                _conv(out, f"output_blocks.{n}.{2 if d > 0 else 1}.conv", ch, ch, 3)
            n += 1
    _norm(out, "out.0", ch)
    _conv(out, "out.2", cfg.out_channels, ch, 3)
    return out


HINT_CHANNELS = (16, 32, 96, 256)


def controlnet_layout(cfg: UNetConfig, *, hint_in: int = 3, hint_channels: Sequence[int] = HINT_CHANNELS) -> Layout:
    """Keys (without ``control_model.``) and shapes of an LDM ``cldm.ControlNet`` for a UNet configuration."""
    out: Layout = {}
    chans, ch = _unet_encoder(out, cfg)
    for n, c in enumerate(chans):
        _conv(out, f"zero_convs.{n}.0", c, c, 1)
    _conv(out, "middle_block_out.0", ch, ch, 1)
    hc = list(hint_channels)
    _conv(out, "input_hint_block.0", hc[0], hint_in, 3)
    idx = 2
    for i in range(len(hc) - 1):
        _conv(out, f"input_hint_block.{idx}", hc[i], hc[i], 3)
        _conv(out, f"input_hint_block.{idx + 2}", hc[i + 1], hc[i], 3)
        idx += 4
    _conv(out, f"input_hint_block.{idx}", cfg.model_channels, hc[-1], 3)
    return out


@dataclass(frozen=True)
class VaeSide:
    """One half of an LDM AutoencoderKL: base width ``ch``, ``ch_mult`` per level, res blocks per level."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)


def _vae_res(out: Layout, p: str, cin: int, cout: int) -> None:
    _norm(out, p + "norm1", cin)
    _conv(out, p + "conv1", cout, cin, 3)
    _norm(out, p + "norm2", cout)
    _conv(out, p + "conv2", cout, cout, 3)
    if cin != cout:
        _conv(out, p + "nin_shortcut", cout, cin, 1)


def _vae_mid(out: Layout, p: str, c: int) -> None:
    _vae_res(out, p + "mid.block_1.", c, c)
    _norm(out, p + "mid.attn_1.norm", c)
    for name in ("q", "k", "v", "proj_out"):
        _conv(out, f"{p}mid.attn_1.{name}", c, c, 1)
    _vae_res(out, p + "mid.block_2.", c, c)


def vae_layout(encoder: VaeSide = VaeSide(), decoder: VaeSide = VaeSide(), *, z_channels: int = 4) -> Layout:
    """Keys (without ``first_stage_model.``) and shapes of an LDM AutoencoderKL (encoder and decoder widths may
    differ, as ComfyUI allows)."""
    out: Layout = {}
    e = encoder
    _conv(out, "encoder.conv_in", e.ch, 3, 3)
    block_in = e.ch
    for i, m in enumerate(e.ch_mult):
        block_out = e.ch * m
        for j in range(e.num_res_blocks):
            _vae_res(out, f"encoder.down.{i}.block.{j}.", block_in, block_out)
            block_in = block_out
        if i != len(e.ch_mult) - 1:
            _conv(out, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    _vae_mid(out, "encoder.", block_in)
    _norm(out, "encoder.norm_out", block_in)
    _conv(out, "encoder.conv_out", 2 * z_channels, block_in, 3)
    _conv(out, "quant_conv", 2 * z_channels, 2 * z_channels, 1)
    _conv(out, "post_quant_conv", z_channels, z_channels, 1)
    d = decoder
    block_in = d.ch * d.ch_mult[-1]
    _conv(out, "decoder.conv_in", block_in, z_channels, 3)
    _vae_mid(out, "decoder.", block_in)
    for i in reversed(range(len(d.ch_mult))):
        block_out = d.ch * d.ch_mult[i]
        for j in range(d.num_res_blocks + 1):
            _vae_res(out, f"decoder.up.{i}.block.{j}.", block_in, block_out)
            block_in = block_out
        if i != 0:
            _conv(out, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    _norm(out, "decoder.norm_out", block_in)
    _conv(out, "decoder.conv_out", 3, block_in, 3)
    return out


@dataclass(frozen=True)
class ClipShape:
    hidden_size: int = 768
    num_layers: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 49408
    max_positions: int = 77
    projection_dim: int | None = None


CLIP_L = ClipShape()
CLIP_H = ClipShape(hidden_size=1024, num_layers=24, intermediate_size=4096, projection_dim=1024)
CLIP_G = ClipShape(hidden_size=1280, num_layers=32, intermediate_size=5120, projection_dim=1280)


def clip_transformers_layout(c: ClipShape = CLIP_L, *, position_ids: bool = True) -> Layout:
    """transformers ``CLIPTextModel`` keys in the ``text_model.`` layout (what SD1 checkpoints store under
    ``cond_stage_model.transformer.``), with the legacy ``position_ids`` buffer real checkpoints carry."""
    out: Layout = {}
    d = c.hidden_size
    out["text_model.embeddings.token_embedding.weight"] = (c.vocab_size, d)
    out["text_model.embeddings.position_embedding.weight"] = (c.max_positions, d)
    if position_ids:
        out["text_model.embeddings.position_ids"] = (1, c.max_positions)
    for i in range(c.num_layers):
        p = f"text_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(out, f"{p}self_attn.{n}", d, d)
        _norm(out, p + "layer_norm1", d)
        _linear(out, p + "mlp.fc1", c.intermediate_size, d)
        _linear(out, p + "mlp.fc2", d, c.intermediate_size)
        _norm(out, p + "layer_norm2", d)
    _norm(out, "text_model.final_layer_norm", d)
    if c.projection_dim is not None:
        out["text_projection.weight"] = (c.projection_dim, d)
    return out


def clip_open_clip_layout(c: ClipShape = CLIP_H) -> Layout:
    """OpenCLIP text-tower keys (what SD2 stores under ``cond_stage_model.model.`` and SDXL under
    ``conditioner.embedders.1.model.``)."""
    out: Layout = {}
    d = c.hidden_size
    out["token_embedding.weight"] = (c.vocab_size, d)
    out["positional_embedding"] = (c.max_positions, d)
    for i in range(c.num_layers):
        p = f"transformer.resblocks.{i}."
        _norm(out, p + "ln_1", d)
        out[p + "attn.in_proj_weight"] = (3 * d, d)
        out[p + "attn.in_proj_bias"] = (3 * d,)
        _linear(out, p + "attn.out_proj", d, d)
        _norm(out, p + "ln_2", d)
        _linear(out, p + "mlp.c_fc", c.intermediate_size, d)
        _linear(out, p + "mlp.c_proj", d, c.intermediate_size)
    _norm(out, "ln_final", d)
    out["text_projection"] = (d, c.projection_dim or d)
    out["logit_scale"] = ()
    return out


def prefixed(layout: Layout, prefix: str) -> Layout:
    return {prefix + k: v for k, v in layout.items()}
