"""LDM/SGM/OpenCLIP → diffusers/transformers state-dict conversion (and back, for building test files).

The UNet/ControlNet mapping is derived from the detected configuration (levels, res blocks per level, attention
placement, middle block), so it also covers reduced and non-standard UNets that diffusers' own single-file converter
(which assumes one ``layers_per_block`` for every level) does not. Every function here is pure key/tensor mapping;
the loader checks the result with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import torch

from gpu_executor.diffusion.models.detection import UNetConfig
from gpu_executor.diffusion.models.errors import ConversionError

T = TypeVar("T")

UNET_RESNET_RENAMES: tuple[tuple[str, str], ...] = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
)


class _PrefixMap:
    """Bidirectional prefix renames; ``resnet`` entries also rename the first component(s) of the remainder."""

    def __init__(self, renames: tuple[tuple[str, str], ...]) -> None:
        self._renames = renames
        self._fwd: dict[str, tuple[str, bool]] = {}
        self._rev: dict[str, tuple[str, bool]] = {}

    def add(self, src: str, dst: str, resnet: bool = False) -> None:
        self._fwd[src] = (dst, resnet)
        self._rev[dst] = (src, resnet)

    @staticmethod
    def _lookup(table: Mapping[str, tuple[str, bool]], key: str) -> tuple[str, str, bool] | None:
        pos = key.rfind(".")
        while pos != -1:
            pre = key[: pos + 1]
            hit = table.get(pre)
            if hit is not None:
                return hit[0], key[pos + 1 :], hit[1]
            pos = key.rfind(".", 0, pos)
        return None

    def _map(self, key: str, forward: bool) -> str:
        hit = self._lookup(self._fwd if forward else self._rev, key)
        if hit is None:
            raise KeyError(key)
        dst, rest, resnet = hit
        if resnet:
            for a, b in self._renames:
                src_sub, dst_sub = (a, b) if forward else (b, a)
                if rest.startswith(src_sub):
                    return dst + dst_sub + rest[len(src_sub) :]
            raise KeyError(key)
        return dst + rest

    def forward(self, key: str) -> str:
        return self._map(key, True)

    def backward(self, key: str) -> str:
        return self._map(key, False)

    def pairs(self) -> Iterable[tuple[str, str]]:
        return ((k, v[0]) for k, v in self._fwd.items())


class UNetKeyMap:
    """Key mapping between an LDM UNet (or ControlNet) and diffusers' ``UNet2DConditionModel`` (``ControlNetModel``),
    for the layout described by ``cfg``. Keys are given without the ``model.diffusion_model.``/``control_model.``
    prefix."""

    def __init__(self, cfg: UNetConfig, *, controlnet: bool = False, hint_convs: int = 8) -> None:
        self.cfg = cfg
        m = _PrefixMap(UNET_RESNET_RENAMES)
        m.add("time_embed.0.", "time_embedding.linear_1.")
        m.add("time_embed.2.", "time_embedding.linear_2.")
        m.add("label_emb.0.0.", "add_embedding.linear_1.")
        m.add("label_emb.0.2.", "add_embedding.linear_2.")
        m.add("input_blocks.0.0.", "conv_in.")
        n = 1
        depths = cfg.depth_per_level()
        for level in range(cfg.levels):
            for j in range(cfg.num_res_blocks[level]):
                m.add(f"input_blocks.{n}.0.", f"down_blocks.{level}.resnets.{j}.", resnet=True)
                if depths[level][j] > 0:
                    m.add(f"input_blocks.{n}.1.", f"down_blocks.{level}.attentions.{j}.")
                n += 1
            if level != cfg.levels - 1:
                m.add(f"input_blocks.{n}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.")
                n += 1
        self.num_input_blocks = n
        if cfg.transformer_depth_middle >= -1:
            m.add("middle_block.0.", "mid_block.resnets.0.", resnet=True)
        if cfg.transformer_depth_middle >= 0:
            m.add("middle_block.1.", "mid_block.attentions.0.")
            m.add("middle_block.2.", "mid_block.resnets.1.", resnet=True)
        if controlnet:
            for i in range(n):
                m.add(f"zero_convs.{i}.0.", f"controlnet_down_blocks.{i}.")
            m.add("middle_block_out.0.", "controlnet_mid_block.")
            m.add("input_hint_block.0.", "controlnet_cond_embedding.conv_in.")
            for i in range(1, hint_convs - 1):
                m.add(f"input_hint_block.{2 * i}.", f"controlnet_cond_embedding.blocks.{i - 1}.")
            m.add(f"input_hint_block.{2 * (hint_convs - 1)}.", "controlnet_cond_embedding.conv_out.")
        else:
            out_depths = cfg.output_depth_per_level()
            n = 0
            for u, level in enumerate(reversed(range(cfg.levels))):
                for j in range(cfg.num_res_blocks[level] + 1):
                    m.add(f"output_blocks.{n}.0.", f"up_blocks.{u}.resnets.{j}.", resnet=True)
                    d = out_depths[level][j]
                    if d > 0:
                        m.add(f"output_blocks.{n}.1.", f"up_blocks.{u}.attentions.{j}.")
                    if level and j == cfg.num_res_blocks[level]:
                        m.add(f"output_blocks.{n}.{2 if d > 0 else 1}.conv.", f"up_blocks.{u}.upsamplers.0.conv.")
                    n += 1
            m.add("out.0.", "conv_norm_out.")
            m.add("out.2.", "conv_out.")
        self._map = m

    def to_diffusers(self, ldm_key: str) -> str:
        return self._map.forward(ldm_key)

    def to_ldm(self, diffusers_key: str) -> str:
        return self._map.backward(diffusers_key)

    def convert(self, ldm: Mapping[str, T]) -> dict[str, T]:
        """Rename every key of an LDM state dict; raises `ConversionError` listing keys with no counterpart."""
        out: dict[str, T] = {}
        bad: list[str] = []
        for k, v in ldm.items():
            try:
                out[self.to_diffusers(k)] = v
            except KeyError:
                bad.append(k)
        if bad:
            raise ConversionError(f"{len(bad)} UNet keys have no diffusers counterpart, e.g. {sorted(bad)[:5]}")
        return out

    def convert_back(self, diffusers: Mapping[str, T]) -> dict[str, T]:
        out: dict[str, T] = {}
        for k, v in diffusers.items():
            try:
                out[self.to_ldm(k)] = v
            except KeyError as exc:
                raise ConversionError(f"diffusers key {k!r} has no LDM counterpart") from exc
        return out


# ----------------------------------------------------------------------------------------------------------- VAE

_VAE_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_VAE_ATTN_OLD = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_VAE_ATTN_OLD_TO_LDM = {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def vae_key_to_diffusers(key: str, decoder_levels: int) -> str:
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    side, rest = parts[0], parts[1:]
    if side not in ("encoder", "decoder") or not rest:
        raise KeyError(key)
    head, leaf = rest[0], rest[-1]
    if head in ("conv_in", "conv_out") and len(rest) == 2:
        return key
    if head == "norm_out" and len(rest) == 2:
        return f"{side}.conv_norm_out.{leaf}"
    if head in ("down", "up") and len(rest) >= 4:
        i = int(rest[1])
        blocks = "down_blocks" if head == "down" else "up_blocks"
        bi = i if head == "down" else decoder_levels - 1 - i
        if rest[2] == "block" and len(rest) == 6 and rest[4] in _VAE_RES:
            return f"{side}.{blocks}.{bi}.resnets.{rest[3]}.{_VAE_RES[rest[4]]}.{leaf}"
        if rest[2] in ("downsample", "upsample") and rest[3] == "conv" and len(rest) == 5:
            sampler = "downsamplers" if head == "down" else "upsamplers"
            return f"{side}.{blocks}.{bi}.{sampler}.0.conv.{leaf}"
    if head == "mid" and len(rest) == 4:
        if rest[1] in ("block_1", "block_2") and rest[2] in _VAE_RES:
            return f"{side}.mid_block.resnets.{int(rest[1][-1]) - 1}.{_VAE_RES[rest[2]]}.{leaf}"
        if rest[1] == "attn_1" and rest[2] in _VAE_ATTN:
            return f"{side}.mid_block.attentions.0.{_VAE_ATTN[rest[2]]}.{leaf}"
    raise KeyError(key)


def convert_vae(ldm: Mapping[str, torch.Tensor], decoder_levels: int) -> dict[str, torch.Tensor]:
    """LDM AutoencoderKL → diffusers AutoencoderKL (1×1-conv attention projections become linear weights)."""
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for k, v in ldm.items():
        try:
            nk = vae_key_to_diffusers(k, decoder_levels)
        except (KeyError, ValueError):
            bad.append(k)
            continue
        if ".mid_block.attentions.0.to_" in nk and nk.endswith(".weight") and v.dim() == 4:
            v = v[:, :, 0, 0]
        out[nk] = v
    if bad:
        raise ConversionError(f"{len(bad)} VAE keys have no diffusers counterpart, e.g. {sorted(bad)[:5]}")
    return out


def vae_diffusers_to_ldm_key(key: str, decoder_levels: int) -> str:
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    side, rest = parts[0], parts[1:]
    inv_res = {v: k for k, v in _VAE_RES.items()}
    inv_attn = {v: k for k, v in _VAE_ATTN.items()}
    inv_attn.update(_VAE_ATTN_OLD_TO_LDM)
    leaf = rest[-1]
    if rest[0] in ("conv_in", "conv_out"):
        return key
    if rest[0] == "conv_norm_out":
        return f"{side}.norm_out.{leaf}"
    if rest[0] in ("down_blocks", "up_blocks"):
        bi = int(rest[1])
        head = "down" if rest[0] == "down_blocks" else "up"
        i = bi if head == "down" else decoder_levels - 1 - bi
        if rest[2] == "resnets":
            return f"{side}.{head}.{i}.block.{rest[3]}.{inv_res[rest[4]]}.{leaf}"
        return f"{side}.{head}.{i}.{'downsample' if head == 'down' else 'upsample'}.conv.{leaf}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{side}.mid.block_{int(rest[2]) + 1}.{inv_res[rest[3]]}.{leaf}"
        name = ".".join(rest[3:-1])
        return f"{side}.mid.attn_1.{inv_attn[name]}.{leaf}"
    raise KeyError(key)



def vae_diffusers_to_ldm(sd: Mapping[str, T], decoder_levels: int) -> dict[str, T]:
    """Key renames only (shapes are left alone): used to read a diffusers-layout VAE's configuration."""
    out: dict[str, T] = {}
    for k, v in sd.items():
        try:
            out[vae_diffusers_to_ldm_key(k, decoder_levels)] = v
        except (KeyError, IndexError, ValueError) as exc:
            raise ConversionError(f"diffusers VAE key {k!r} has no LDM counterpart") from exc
    return out


def normalize_diffusers_vae(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers VAE attention names (query/key/value/proj_attn) → current ones; 1×1 convs → linear."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        nk = k
        for old, new in _VAE_ATTN_OLD.items():
            nk = nk.replace(f".attentions.0.{old}.", f".attentions.0.{new}.")
        if ".mid_block.attentions.0.to_" in nk and nk.endswith(".weight") and v.dim() == 4:
            v = v[:, :, 0, 0]
        out[nk] = v
    return out


# ---------------------------------------------------------------------------------------------------------- CLIP

# Weights that checkpoints carry but no transformers text model uses.
CLIP_IGNORED = ("text_model.embeddings.position_ids", "logit_scale", "attn_mask")


def clip_to_canonical(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-layout CLIP text weights (with or without the ``text_model.`` level) → ``text_model.*`` keys
    plus ``text_projection.weight``; old CLIPSave ``text_projection`` matrices are transposed into place."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "text_projection":
            out["text_projection.weight"] = v.transpose(0, 1).contiguous()
        elif k.startswith(("text_projection.", "logit_scale")) or k.startswith("text_model."):
            out[k] = v
        else:
            out["text_model." + k] = v
    return out


def open_clip_to_canonical(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower (``token_embedding``, ``transformer.resblocks.N``, ``ln_final``, ``text_projection``)
    → transformers ``CLIPTextModel`` keys; fused q/k/v in-projections are split."""
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    simple = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
    }
    sub = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
        elif k == "text_projection":
            out["text_projection.weight"] = v.transpose(0, 1).contiguous()
        elif k in ("logit_scale", "attn_mask"):
            out[k] = v
        elif k.startswith("transformer.resblocks."):
            parts = k.split(".")
            layer, name = parts[2], ".".join(parts[3:])
            p = f"text_model.encoder.layers.{layer}."
            if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if name.endswith("weight") else "bias"
                q, kk, vv = v.chunk(3, dim=0)
                out[f"{p}self_attn.q_proj.{kind}"] = q.contiguous()
                out[f"{p}self_attn.k_proj.{kind}"] = kk.contiguous()
                out[f"{p}self_attn.v_proj.{kind}"] = vv.contiguous()
            else:
                base, _, leaf = name.rpartition(".")
                if base in sub:
                    out[f"{p}{sub[base]}.{leaf}"] = v
                else:
                    bad.append(k)
        else:
            bad.append(k)
    if bad:
        raise ConversionError(f"{len(bad)} OpenCLIP keys have no transformers counterpart, e.g. {sorted(bad)[:5]}")
    return out


def canonical_to_open_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `open_clip_to_canonical` (for writing test files)."""
    out: dict[str, torch.Tensor] = {}
    inv_sub = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.transpose(0, 1).contiguous()
        elif k.startswith("text_model.encoder.layers."):
            parts = k.split(".")
            layer, name = parts[3], ".".join(parts[4:])
            base, _, leaf = name.rpartition(".")
            if base in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, leaf), {})[base[-6]] = v
            else:
                out[f"transformer.resblocks.{layer}.{inv_sub[base]}.{leaf}"] = v
        elif k == "logit_scale":
            out[k] = v
    for (layer, leaf), parts_ in qkv.items():
        name = "in_proj_weight" if leaf == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{layer}.attn.{name}"] = torch.cat([parts_["q"], parts_["k"], parts_["v"]], 0)
    return out


def fit_clip_to_model(canonical: Mapping[str, torch.Tensor], model_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Drop weights the model does not use (position_ids, logit_scale, an unused projection) and match the model's
    key naming (transformers 5 ``CLIPTextModel`` has no ``text_model.`` level, ``...WithProjection`` does)."""
    keys = set(model_keys)
    nested = any(k.startswith("text_model.") for k in keys)
    out: dict[str, torch.Tensor] = {}
    for k, v in canonical.items():
        if k in CLIP_IGNORED or k.endswith(".position_ids"):
            continue
        if k == "text_projection.weight" and k not in keys:
            continue
        nk = k if nested or not k.startswith("text_model.") else k[len("text_model.") :]
        out[nk] = v
    return out


def canonical_clip_key(model_key: str) -> str:
    """A model's CLIP parameter name in the canonical ``text_model.*`` naming."""
    if model_key.startswith(("text_model.", "text_projection")):
        return model_key
    return "text_model." + model_key


# ---------------------------------------------------------------------------------------------------- utilities


def strip_prefix(sd: Mapping[str, T], prefix: str) -> dict[str, T]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
