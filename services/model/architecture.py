"""What a model file is, from its safetensors header alone: kind-specific detection of the architecture (and, for a
LoRA, its base model and rank), parameter count and dtypes.

Checkpoints and diffusion models follow the executor's own loader detection
(`gpu_executor/diffusion/models/detection.py`, itself after ComfyUI's `model_detection.py`), re-implemented here on
keys and shapes only — the control plane never imports torch and never loads a tensor: the UNet configuration is
derived from `input_blocks`/`output_blocks`/`middle_block` keys and shapes, the family from that configuration, and
families the built-in engine does not run (SD3, Flux, Cascade, video models...) from the same marker keys, so they
are reported as such rather than mis-detected. SD2's v-prediction test reads one small weight's values (ComfyUI:
population std of `output_blocks.11.1.transformer_blocks.0.norm1.bias` > 0.09); its bytes are copied out of the
upload stream (`sd2_probe_keys`) and decoded here with `struct`. `tests/unit/test_model_architecture.py` checks that
both detections agree on every layout the executor's tests use.
"""

from __future__ import annotations

import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.model.domain import BUILTIN_ARCHITECTURES, Architecture, Description, ModelKind
from services.model.safetensors_header import BUILTIN_DTYPES, SafetensorsHeader

Shapes = Mapping[str, tuple[int, ...]]

SD1, SD2, SDXL, SDXL_REFINER = "sd1", "sd2", "sdxl", "sdxl_refiner"
SUPPORTED_FAMILIES = frozenset({SD1, SD2, SDXL, SDXL_REFINER})
SD2_V_PROBE_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_STD_THRESHOLD = 0.09
UNET_PREFIX_CANDIDATES = ("model.diffusion_model.", "model.model.", "diffusion_model.", "net.", "model.", "")

# Marker keys (relative to the diffusion-model prefix) of families the built-in engine recognises but does not
# run; the order matters where markers overlap (Chroma carries Flux's double blocks too). Same table as the
# executor's.
OTHER_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("sd3", "joint_blocks.0.context_block.attn.qkv.weight", "flow"),
    ("stable_cascade", "clf.1.weight", "eps"),
    ("stable_audio", "transformer.rotary_pos_emb.inv_freq", "v"),
    ("aura_flow", "double_layers.0.attn.w1q.weight", "flow"),
    ("hunyuan_dit", "mlp_t5.0.weight", "v"),
    ("chroma", "distilled_guidance_layer.0.norms.0.scale", "flow"),
    ("hunyuan_video", "txt_in.individual_token_refiner.blocks.0.norm1.weight", "flow"),
    ("flux", "double_blocks.0.img_attn.norm.key_norm.scale", "flow"),
    ("mochi", "t5_yproj.weight", "flow"),
    ("ltxv", "adaln_single.emb.timestep_embedder.linear_1.bias", "flow"),
    ("pixart", "t_block.1.weight", "eps"),
    ("lumina2", "cap_embedder.1.weight", "flow"),
    ("wan", "head.modulation", "flow"),
    ("hidream", "caption_projection.0.linear.weight", "flow"),
    ("flux_diffusers", "single_transformer_blocks.0.attn.to_q.weight", "flow"),
    ("sd3_diffusers", "transformer_blocks.0.attn.add_q_proj.weight", "flow"),
)
FAMILY_ARCHITECTURE = {"sd3": Architecture.SD3, "sd3_diffusers": Architecture.SD3, "flux": Architecture.FLUX,
                       "flux_diffusers": Architecture.FLUX}


class DetectionError(Exception):
    """The keys look like a diffusion model but do not add up (the executor's UnsupportedModelError)."""


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    transformer_depth: tuple[int, ...]
    context_dim: int | None
    adm_in_channels: int | None
    use_linear_in_transformer: bool
    temporal: bool = False


@dataclass(frozen=True)
class Detected:
    """A diffusion model's family in the executor's vocabulary ("sd1", "sdxl", "flux", "unknown"...)."""

    family: str
    supported: bool
    prediction: str = "unknown"
    variant: str | None = None
    reason: str | None = None
    unet_prefix: str = ""
    layout: str = "ldm"  # "ldm", "diffusers" or "other"
    unet: UNetConfig | None = None
    text_encoders: tuple[str, ...] = ()
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def architecture(self) -> Architecture:
        if self.family == SD1:
            return Architecture.SD1
        if self.family == SD2:
            return Architecture.SD2_V if self.prediction == "v" else Architecture.SD2
        if self.family == SDXL:
            return Architecture.SDXL
        if self.family == SDXL_REFINER:
            return Architecture.SDXL_REFINER
        if self.family == "unknown":
            return Architecture.UNSPECIFIED
        return FAMILY_ARCHITECTURE.get(self.family, Architecture.OTHER)


class _Index:
    """Prefix lookups over a key set: `has("a.b.")` is true when some key starts with `a.b.`."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = set(keys)
        self.prefixes: set[str] = set()
        for k in self.keys:
            pos = k.find(".")
            while pos != -1:
                self.prefixes.add(k[: pos + 1])
                pos = k.find(".", pos + 1)

    def has(self, prefix: str) -> bool:
        return prefix in self.prefixes

    def count(self, pattern: str) -> int:
        i = 0
        while self.has(pattern.format(i)):
            i += 1
        return i


def _dim(shapes: Shapes, key: str, dim: int) -> int | None:
    s = shapes.get(key)
    return s[dim] if s is not None and len(s) > dim else None


def _transformer_depth(idx: _Index, shapes: Shapes, prefix: str) -> tuple[int, int | None, bool | None]:
    depth = idx.count(prefix + "transformer_blocks.{}.")
    if depth == 0:
        return 0, None, None
    proj = shapes.get(prefix + "proj_in.weight")
    return depth, _dim(shapes, f"{prefix}transformer_blocks.0.attn2.to_k.weight", 1), proj is not None and len(
        proj) == 2


def unet_config(shapes: Shapes, prefix: str = "", *, require_output: bool = True) -> UNetConfig:
    """An LDM UNet's configuration from `<prefix>input_blocks...` (ControlNets: `require_output=False`)."""
    idx = _Index(k[len(prefix):] for k in shapes if k.startswith(prefix))
    sh = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    conv_in = sh.get("input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise DetectionError("no LDM UNet input convolution (input_blocks.0.0.weight)")
    model_channels, in_channels = conv_in[0], conv_in[1]
    if model_channels <= 0:
        raise DetectionError("the UNet input convolution has no channels")
    temporal = any(".time_stack." in k or ".time_mix_blocks." in k or ".time_mixer." in k for k in idx.keys)
    num_res: list[int] = []
    mult: list[int] = []
    depth_in: list[int] = []
    context_dim: int | None = None
    linear: bool | None = None
    res_count = level_ch = 0
    for n in range(1, idx.count("input_blocks.{}.")):
        p = f"input_blocks.{n}."
        if f"{p}0.op.weight" in sh:
            num_res.append(res_count)
            mult.append(level_ch // model_channels)
            res_count = 0
            continue
        out_conv = sh.get(f"{p}0.out_layers.3.weight")
        if f"{p}0.in_layers.0.weight" not in sh or not out_conv:
            raise DetectionError(f"unrecognised UNet input block {n} (neither a res block nor a downsample)")
        if out_conv[0] % model_channels:
            raise DetectionError(f"input block {n} has {out_conv[0]} channels, not a multiple of {model_channels}")
        res_count += 1
        level_ch = out_conv[0]
        d, ctx, lin = _transformer_depth(idx, sh, p + "1.")
        depth_in.append(d)
        if d and context_dim is None:
            context_dim, linear = ctx, lin
    num_res.append(res_count)
    mult.append(level_ch // model_channels if level_ch else 1)
    n_out = idx.count("output_blocks.{}.")
    if n_out:
        expected = sum(r + 1 for r in num_res)
        if n_out != expected:
            raise DetectionError(f"{n_out} UNet output blocks where the input blocks imply {expected}")
        for n in range(n_out):
            d, ctx, lin = _transformer_depth(idx, sh, f"output_blocks.{n}.1.")
            if d and context_dim is None:
                context_dim, linear = ctx, lin
    elif require_output:
        raise DetectionError("the UNet has no output blocks")
    if (idx.has("middle_block.1.proj_in.") or idx.has("middle_block.1.transformer_blocks.")) and context_dim is None:
        _d, context_dim, linear = _transformer_depth(idx, sh, "middle_block.1.")
    return UNetConfig(in_channels, model_channels, tuple(mult), tuple(num_res), tuple(depth_in), context_dim,
                      _dim(sh, "label_emb.0.0.weight", 1), bool(linear), temporal)


def diffusers_unet_config(shapes: Shapes, prefix: str = "") -> UNetConfig:
    """The same configuration from a diffusers-layout `UNet2DConditionModel` state dict."""
    idx = _Index(k[len(prefix):] for k in shapes if k.startswith(prefix))
    sh = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    conv_in = sh.get("conv_in.weight")
    if conv_in is None or len(conv_in) != 4 or conv_in[0] <= 0:
        raise DetectionError("no diffusers UNet input convolution (conv_in.weight)")
    model_channels, in_channels = conv_in[0], conv_in[1]
    adm = _dim(sh, "add_embedding.linear_1.weight", 1) or _dim(sh, "class_embedding.linear_1.weight", 1)
    num_res: list[int] = []
    mult: list[int] = []
    depth_in: list[int] = []
    context_dim: int | None = None
    linear: bool | None = None
    levels = idx.count("down_blocks.{}.")
    for i in range(levels):
        r = idx.count(f"down_blocks.{i}.resnets.{{}}.")
        num_res.append(r)
        conv2 = sh.get(f"down_blocks.{i}.resnets.0.conv2.weight")
        if not conv2:
            raise DetectionError(f"diffusers down block {i} has no res block")
        mult.append(conv2[0] // model_channels)
        for j in range(r):
            d, ctx, lin = _transformer_depth(idx, sh, f"down_blocks.{i}.attentions.{j}.")
            depth_in.append(d)
            if d and context_dim is None:
                context_dim, linear = ctx, lin
    for u in range(levels):
        for j in range(num_res[levels - 1 - u] + 1):
            d, ctx, lin = _transformer_depth(idx, sh, f"up_blocks.{u}.attentions.{j}.")
            if d and context_dim is None:
                context_dim, linear = ctx, lin
    if idx.has("mid_block.attentions.0.") and context_dim is None:
        _d, context_dim, linear = _transformer_depth(idx, sh, "mid_block.attentions.0.")
    return UNetConfig(in_channels, model_channels, tuple(mult), tuple(num_res), tuple(depth_in), context_dim, adm,
                      bool(linear))


def classify_unet(cfg: UNetConfig) -> tuple[str, str | None, str | None]:
    """(family, variant, reason-if-unsupported), the executor's table."""
    if cfg.temporal:
        return "svd", None, "video UNets (SVD/SV3D) are not supported"
    if cfg.context_dim == 768 and cfg.model_channels == 320 and not cfg.use_linear_in_transformer:
        if cfg.adm_in_channels is not None:
            return "unknown_unet", None, "an SD1-like UNet with an ADM input is not a known model"
        if cfg.in_channels == 8:
            return "stable_zero123", None, "Stable Zero123 is not supported"
        return SD1, "inpaint" if cfg.in_channels == 9 else None, None
    if cfg.context_dim == 1024 and cfg.model_channels == 320 and cfg.use_linear_in_transformer:
        if cfg.adm_in_channels in (1536, 2048):
            return "sd2_unclip", None, "SD2.1 unCLIP models are not supported"
        if cfg.adm_in_channels is not None:
            return "unknown_unet", None, "an SD2-like UNet with an unknown ADM input"
        return SD2, "inpaint" if cfg.in_channels == 9 else None, None
    if cfg.context_dim == 1024 and cfg.model_channels == 256 and cfg.in_channels == 7:
        return "sd_x4_upscaler", None, "the SD x4 upscaler is not supported"
    if (cfg.model_channels == 384 and cfg.context_dim == 1280 and cfg.adm_in_channels == 2560
            and cfg.use_linear_in_transformer):
        return SDXL_REFINER, None, None
    if (cfg.model_channels == 320 and cfg.context_dim == 2048 and cfg.adm_in_channels == 2816
            and cfg.use_linear_in_transformer):
        variant = {
            (0, 0, 2, 2, 10, 10): None,
            (0, 0, 2, 2, 4, 4): "ssd1b",
            (0, 0, 1, 1, 2, 2): "segmind_vega",
            (0, 2, 5): "koala_700m",
            (0, 2, 6): "koala_1b",
        }.get(cfg.transformer_depth, "custom")
        if cfg.in_channels == 9:
            variant = "inpaint"
        return SDXL, variant, None
    return "unknown_unet", None, f"unrecognised UNet (context {cfg.context_dim}, channels {cfg.model_channels})"


def _find_prefix(idx: _Index, markers: Iterable[str]) -> tuple[str, str] | None:
    marker_list = list(markers)
    for prefix in UNET_PREFIX_CANDIDATES:
        for marker in marker_list:
            if prefix + marker in idx.keys:
                return prefix, marker
    return None


_TEXT_ENCODER_PREFIXES = ("cond_stage_model.transformer.", "cond_stage_model.model.",
                          "conditioner.embedders.0.transformer.", "conditioner.embedders.0.model.",
                          "conditioner.embedders.1.model.", "conditioner.embedders.1.transformer.",
                          "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.")


def clip_width(idx: _Index, shapes: Shapes, prefix: str) -> tuple[int, str] | None:
    """(hidden width, layout) of a CLIP text encoder stored under `prefix`, if there is one."""
    if idx.has(prefix + "transformer.resblocks."):
        emb = shapes.get(prefix + "token_embedding.weight")
        layout = "open_clip"
    else:
        emb = None
        for inner in ("text_model.", ""):
            emb = shapes.get(f"{prefix}{inner}embeddings.token_embedding.weight")
            if emb is not None:
                break
        layout = "transformers"
    if emb is None or len(emb) != 2:
        return None
    return emb[1], layout


def _clip_name(width: int, layout: str) -> str:
    return {768: "l", 1024: "h", 1280: "g"}.get(width) or ("l" if layout == "transformers" else
                                                           ("g" if width > 1024 else "h"))


def _text_encoders(idx: _Index, shapes: Shapes) -> tuple[str, ...]:
    found = []
    for prefix in _TEXT_ENCODER_PREFIXES:
        width = clip_width(idx, shapes, prefix)
        if width is not None:
            found.append(_clip_name(*width))
    if idx.has("text_encoders.t5xxl.transformer."):
        found.append("t5xxl")
    return tuple(found)


def sd2_probe_key(cfg: UNetConfig, layout: str) -> str | None:
    """Where SD2's v-prediction probe weight is (relative to the UNet prefix), in this layout."""
    if layout == "ldm":
        return SD2_V_PROBE_KEY
    # diffusers: output block 11 → up_blocks.<u>.attentions.<j>, counting output blocks from the lowest level
    block, levels = 11, len(cfg.num_res_blocks)
    for u in range(levels):
        per_level = cfg.num_res_blocks[levels - 1 - u] + 1
        if block < per_level:
            return f"up_blocks.{u}.attentions.{block}.transformer_blocks.0.norm1.bias"
        block -= per_level
    return None


def detect_diffusion_model(shapes: Shapes, probes: Mapping[str, tuple[str, bytes]] | None = None) -> Detected:
    """A checkpoint's or diffusion model's family from keys and shapes. `probes` maps a key to (dtype, bytes) of
    tensors whose values were captured (SD2's v-prediction probe)."""
    idx = _Index(shapes.keys())
    other = _find_prefix(idx, (marker for _, marker, _ in OTHER_FAMILIES))
    unet_at = _find_prefix(idx, ("input_blocks.0.0.weight",))
    diffusers_at = None if unet_at else _find_prefix(idx, ("down_blocks.0.resnets.0.norm1.weight",))
    encoders = _text_encoders(idx, shapes)
    if other is not None and unet_at is None:
        prefix, marker = other
        family, _marker, prediction = next(f for f in OTHER_FAMILIES if f[1] == marker)
        variant = None
        if family == "flux":
            variant = "dev" if prefix + "guidance_in.in_layer.weight" in shapes else "schnell"
        return Detected(family, False, prediction, variant,
                        f"{family} models are recognised but not supported by the built-in engine", prefix, "other",
                        text_encoders=encoders, details=_other_details(family, prefix, shapes))
    if unet_at is None and diffusers_at is None:
        return Detected("unknown", False, reason="no diffusion model found (no UNet or known DiT marker keys)",
                        text_encoders=encoders)
    try:
        if unet_at is not None:
            prefix, layout = unet_at[0], "ldm"
            cfg = unet_config(shapes, prefix)
        else:
            assert diffusers_at is not None
            prefix, layout = diffusers_at[0], "diffusers"
            cfg = diffusers_unet_config(shapes, prefix)
    except DetectionError as exc:
        return Detected("unknown_unet", False, reason=str(exc), text_encoders=encoders)
    family, variant, reason = classify_unet(cfg)
    prediction = "eps"
    if family == SD2:
        prediction = _sd2_prediction(shapes, prefix, cfg, layout, probes or {})
    elif family == SDXL:
        if "edm_mean" in shapes and "edm_std" in shapes:
            prediction, reason, variant = "edm", "Playground v2.5 (EDM) is not supported", "playground_2_5"
        elif "edm_vpred.sigma_max" in shapes:
            prediction, reason = "v_edm", "EDM v-prediction SDXL models (CosXL) are not supported"
        elif "v_pred" in shapes:
            prediction = "v"
    return Detected(family, reason is None, prediction, variant, reason, prefix, layout, cfg, encoders)


def _sd2_prediction(shapes: Shapes, prefix: str, cfg: UNetConfig, layout: str,
                    probes: Mapping[str, tuple[str, bytes]]) -> str:
    if cfg.in_channels != 4:  # SD2 inpainting models are eps
        return "eps"
    probe = sd2_probe_key(cfg, layout)
    if probe is None or prefix + probe not in shapes:
        return "eps"
    captured = probes.get(prefix + probe)
    values = decode_floats(*captured) if captured is not None else None
    if not values:
        return "unknown"
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    return "v" if std > SD2_V_STD_THRESHOLD else "eps"


def sd2_probe_keys(header: SafetensorsHeader) -> list[str]:
    """The tensors whose values detection will need (given to the stream validator to copy out)."""
    shapes = header.shapes()
    idx = _Index(shapes.keys())
    keys = []
    for marker, layout in (("input_blocks.0.0.weight", "ldm"), ("down_blocks.0.resnets.0.norm1.weight", "diffusers")):
        found = _find_prefix(idx, (marker,))
        if found is None:
            continue
        try:
            cfg = unet_config(shapes, found[0]) if layout == "ldm" else diffusers_unet_config(shapes, found[0])
        except DetectionError:
            continue
        probe = sd2_probe_key(cfg, layout)
        if probe is not None:
            keys.append(found[0] + probe)
    return keys


def decode_floats(dtype: str, data: bytes) -> list[float] | None:
    """Little-endian F16/BF16/F32/F64 bytes as floats (None for other dtypes)."""
    if dtype == "F16":
        return [v for (v,) in struct.iter_unpack("<e", data)]
    if dtype == "BF16":
        widened = b"".join(b"\x00\x00" + data[i:i + 2] for i in range(0, len(data) - 1, 2))
        return [v for (v,) in struct.iter_unpack("<f", widened)]
    if dtype == "F32":
        return [v for (v,) in struct.iter_unpack("<f", data)]
    if dtype == "F64":
        return [v for (v,) in struct.iter_unpack("<d", data)]
    return None


def _count_matching(keys: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _other_details(family: str, prefix: str, shapes: Shapes) -> dict[str, object]:
    keys = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    details: dict[str, object] = {}
    if family == "sd3":
        xe = shapes.get(prefix + "x_embedder.proj.weight")
        if xe is not None and len(xe) == 4:
            details.update(hidden_size=xe[0], in_channels=xe[1], patch_size=xe[2])
        details["depth"] = _count_matching(keys, r"joint_blocks\.(\d+)\.")
    elif family in ("flux", "chroma"):
        img_in = shapes.get(prefix + "img_in.weight")
        if img_in is not None and len(img_in) == 2:
            details.update(hidden_size=img_in[0], in_channels=img_in[1] // 4)
        details["depth"] = _count_matching(keys, r"double_blocks\.(\d+)\.")
        details["depth_single_blocks"] = _count_matching(keys, r"single_blocks\.(\d+)\.")
        details["guidance_embed"] = prefix + "guidance_in.in_layer.weight" in shapes
    return details


# -- LoRA ----------------------------------------------------------------------------------------------------------

_LORA_DOWN = (".lora_down.weight", "_lora.down.weight", ".lora_A.weight", ".lora.down.weight",
              ".lora_linear_layer.down.weight", ".lora_A.default.weight")
_LORA_UP = (".lora_up.weight", "_lora.up.weight", ".lora_B.weight", ".lora.up.weight", ".lora_linear_layer.up.weight",
            ".lora_B.default.weight")
_LYCORIS = {"loha": (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"),
            "lokr": (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b"),
            "dora": (".dora_scale",), "glora": (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")}
_BASE_VERSIONS = (("sdxl", Architecture.SDXL), ("sd_v1", Architecture.SD1), ("sd_v2", Architecture.SD2),
                  ("flux", Architecture.FLUX), ("sd3", Architecture.SD3))
_CONTEXT_ARCHITECTURE = {768: Architecture.SD1, 1024: Architecture.SD2, 2048: Architecture.SDXL,
                         1280: Architecture.SDXL_REFINER}


def is_lora(keys: Iterable[str]) -> bool:
    return any(k.endswith(_LORA_DOWN + _LORA_UP) or any(k.endswith(s) for s in _LYCORIS["loha"] + _LYCORIS["lokr"])
               for k in keys)


@dataclass(frozen=True)
class LoraInfo:
    base: Architecture
    rank: int
    formats: tuple[str, ...]
    unsupported: tuple[str, ...]
    targets: tuple[str, ...]  # "unet", "text_encoder"
    ranks: tuple[int, ...]


def detect_lora(shapes: Shapes, metadata: Mapping[str, str]) -> LoraInfo:
    keys = list(shapes)
    ranks: Counter[int] = Counter()
    formats: set[str] = set()
    for key, shape in shapes.items():
        if key.endswith(_LORA_DOWN) and shape:
            ranks[shape[0]] += 1
            formats.add("kohya" if key.startswith(("lora_unet_", "lora_te")) else
                        "peft" if ".lora_A." in key else "diffusers")
        elif key.endswith(".hada_w1_b") and shape:
            ranks[shape[0]] += 1
    unsupported = tuple(sorted(kind for kind, suffixes in _LYCORIS.items()
                               if any(k.endswith(suffixes) for k in keys)))
    targets = []
    if any(k.startswith(("lora_unet_", "unet.", "diffusion_model.", "transformer.", "lycoris_", "model.",
                         "down_blocks.", "up_blocks.", "mid_block.", "double_blocks.", "single_blocks.",
                         "joint_blocks.")) for k in keys):
        targets.append("unet")
    if any(k.startswith(("lora_te", "text_encoder", "text_encoders.", "te_")) for k in keys):
        targets.append("text_encoder")
    rank = ranks.most_common(1)[0][0] if ranks else 0
    return LoraInfo(_lora_base(shapes, metadata), rank, tuple(sorted(formats)), unsupported, tuple(targets),
                    tuple(sorted(ranks)))


def _lora_base(shapes: Shapes, metadata: Mapping[str, str]) -> Architecture:
    keys = list(shapes)
    if any(m in k for k in keys for m in ("double_blocks", "single_blocks", "single_transformer_blocks")):
        return Architecture.FLUX
    if any("joint_blocks" in k or ("transformer_blocks" in k and "add_q_proj" in k) for k in keys):
        return Architecture.SD3
    # The cross-attention key projection's input width is the text context: 768 SD1, 1024 SD2, 2048 SDXL base,
    # 1280 SDXL refiner.
    for key, shape in shapes.items():
        if key.endswith(_LORA_DOWN) and len(shape) >= 2 and re.search(r"attn2[._](processor[._])?to_[kv]", key):
            found = _CONTEXT_ARCHITECTURE.get(shape[1])
            if found is not None:
                return found
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return Architecture.SDXL
    for key, shape in shapes.items():
        if key.startswith(("lora_te_", "text_encoder.")) and key.endswith(_LORA_DOWN) and "q_proj" in key \
                and len(shape) >= 2:
            return {768: Architecture.SD1, 1024: Architecture.SD2}.get(shape[1], Architecture.UNSPECIFIED)
    version = metadata.get("ss_base_model_version", "") or metadata.get("modelspec.architecture", "")
    for marker, architecture in _BASE_VERSIONS:
        if marker in version.lower().replace("-", "_"):
            return architecture
    return Architecture.UNSPECIFIED


# -- the other kinds -----------------------------------------------------------------------------------------------


def _vae(idx: _Index, shapes: Shapes) -> tuple[str, int, int] | None:
    """(prefix, latent channels, conv dimensions) of a VAE in the file."""
    for prefix in ("", "first_stage_model.", "vae.", "model."):
        conv_in = shapes.get(prefix + "decoder.conv_in.weight")
        if conv_in is not None and len(conv_in) >= 2 and idx.has(prefix + "encoder."):
            return prefix, conv_in[1], len(conv_in) - 2
    return None


def _controlnet(shapes: Shapes) -> tuple[str, Detected]:
    """(layout, the base model's family) of a ControlNet."""
    if "lora_controlnet" in shapes:
        return "control_lora", Detected("unknown", False, reason="Control-LoRA files are not supported")
    if "difference" in shapes:
        return "difference", Detected("unknown", False, reason="difference ControlNets are not supported")
    if any(k.startswith(("controlnet_blocks.", "controlnet_single_blocks.")) for k in shapes):
        family = "flux" if any(k.startswith("controlnet_single_blocks.") or "double_blocks" in k or
                               "single_transformer_blocks" in k for k in shapes) else "sd3"
        return "dit", Detected(family, False, reason="DiT (SD3/Flux) ControlNets are not supported")
    union = any(k.startswith("control_add_embedding.") for k in shapes)
    try:
        if "controlnet_cond_embedding.conv_in.weight" in shapes:
            layout, cfg = "diffusers", diffusers_unet_config(shapes)
        else:
            prefix = next((pre for pre in ("control_model.", "") if f"{pre}zero_convs.0.0.weight" in shapes), None)
            if prefix is None:
                return "unknown", Detected("unknown", False, reason="not a ControlNet (T2I adapters are not supported)")
            layout, cfg = "ldm", unet_config(shapes, prefix, require_output=False)
    except DetectionError as exc:
        return "unknown", Detected("unknown_unet", False, reason=str(exc))
    family, _variant, reason = classify_unet(cfg)
    if union:
        reason = "ControlNet-Union files are not supported"
    return layout, Detected(family, family in SUPPORTED_FAMILIES and reason is None, reason=reason, unet=cfg)


def _embedding(shapes: Shapes) -> tuple[Architecture, int]:
    """(base architecture, vectors) of a textual-inversion embedding."""
    if "clip_l" in shapes and "clip_g" in shapes:
        return Architecture.SDXL, shapes["clip_g"][0] if shapes["clip_g"] else 0
    for key in ("emb_params", *[k for k in shapes if k.startswith("string_to_param")]):
        shape = shapes.get(key)
        if shape is not None and len(shape) >= 1:
            width = shape[-1]
            vectors = shape[0] if len(shape) == 2 else 1
            return {768: Architecture.SD1, 1024: Architecture.SD2}.get(width, Architecture.UNSPECIFIED), vectors
    return Architecture.UNSPECIFIED, 0


def content_kind(shapes: Shapes) -> str:
    """What the keys say the file is: "checkpoint", "diffusion_model", "lora", "vae", "controlnet", "embedding",
    "text_encoder", "clip_vision", "upscale_model" or "unknown"."""
    idx = _Index(shapes)
    if is_lora(shapes):
        return "lora"
    if "controlnet_cond_embedding.conv_in.weight" in shapes or any(
            k.startswith(("control_model.", "zero_convs.", "controlnet_blocks.", "input_hint_block."))
            for k in shapes):
        return "controlnet"
    has_model = (_find_prefix(idx, ("input_blocks.0.0.weight", "down_blocks.0.resnets.0.norm1.weight"))
                 is not None or _find_prefix(idx, (m for _, m, _ in OTHER_FAMILIES)) is not None)
    vae = _vae(idx, shapes)
    if has_model:
        return "checkpoint" if (vae is not None and vae[0]) or _text_encoders(idx, shapes) else "diffusion_model"
    if vae is not None:
        return "vae"
    if "emb_params" in shapes or ("clip_l" in shapes and "clip_g" in shapes) or any(
            k.startswith("string_to_param") for k in shapes):
        return "embedding"
    if idx.has("vision_model.embeddings.") or idx.has("visual."):
        return "clip_vision"
    if any(clip_width(idx, shapes, p) for p in ("", "transformer.", "text_model.")) or idx.has("encoder.block."):
        return "text_encoder"
    if any(k.startswith(("model.0.", "conv_first.", "body.", "model.1.sub.")) for k in shapes):
        return "upscale_model"
    return "unknown"


def _text_encoder(shapes: Shapes) -> tuple[str, bool]:
    """(which text encoder, whether the built-in CLIPLoader reads it)."""
    idx = _Index(shapes)
    for prefix in ("", "transformer.", "text_model.", "model."):
        width = clip_width(idx, shapes, prefix)
        if width is not None:
            return f"clip_{_clip_name(*width)}", True
    if idx.has("encoder.block.") or idx.has("transformer.encoder.block."):
        return "t5", False
    if idx.has("model.layers.") or idx.has("layers."):
        return "llm", False
    return "unknown", False


# -- the description -----------------------------------------------------------------------------------------------


def describe(kind: ModelKind, header: SafetensorsHeader, probes: Mapping[str, bytes] | None = None) -> Description:
    """Everything Model reports about a validated file: architecture, support, parameters, dtypes, LoRA rank,
    the `__metadata__` as is, and detection details as `properties`."""
    shapes = header.shapes()
    dtypes = tuple(sorted({t.dtype for t in header.tensors.values()}))
    captured = {k: (header.tensors[k].dtype, v) for k, v in (probes or {}).items() if k in header.tensors}
    properties: dict[str, Any] = {"detected_kind": content_kind(shapes), "tensor_count": len(header.tensors)}
    architecture, supported, rank = Architecture.UNSPECIFIED, False, 0
    if kind in (ModelKind.CHECKPOINT, ModelKind.DIFFUSION_MODEL):
        found = detect_diffusion_model(shapes, captured)
        architecture, supported = found.architecture, found.supported
        properties["family"] = found.family
        if found.family != "unknown":
            properties["prediction"] = found.prediction
        if found.variant:
            properties["variant"] = found.variant
        if found.reason:
            properties["unsupported_reason"] = found.reason
        if found.text_encoders:
            properties["text_encoders"] = list(found.text_encoders)
        if found.unet is not None:
            properties["unet"] = {"model_channels": found.unet.model_channels,
                                  "in_channels": found.unet.in_channels,
                                  "context_dim": found.unet.context_dim or 0,
                                  "channel_mult": list(found.unet.channel_mult),
                                  "layout": found.layout}
        properties.update({f"dit_{k}": v for k, v in found.details.items()})
        vae = _vae(_Index(shapes), shapes)
        if vae is not None and vae[0]:
            properties["latent_channels"] = vae[1]
    elif kind == ModelKind.LORA:
        lora = detect_lora(shapes, header.metadata)
        architecture, rank = lora.base, lora.rank
        supported = lora.base in BUILTIN_ARCHITECTURES and not lora.unsupported and lora.rank > 0
        properties.update(lora_formats=list(lora.formats), lora_targets=list(lora.targets))
        if len(lora.ranks) > 1:
            properties["lora_ranks"] = list(lora.ranks)
        if lora.unsupported:
            properties["unsupported_reason"] = f"LyCORIS {', '.join(lora.unsupported)} parts are not supported"
    elif kind == ModelKind.VAE:
        vae = _vae(_Index(shapes), shapes)
        if vae is not None:
            properties["latent_channels"] = vae[1]
            if vae[2] != 2:
                architecture, properties["unsupported_reason"] = Architecture.OTHER, "a video (3D) VAE"
            elif vae[1] == 16:
                architecture = Architecture.OTHER  # SD3 and Flux share this VAE shape
                properties["vae_family"] = "sd3_flux"
            elif vae[1] == 4:
                properties["vae_family"] = "sd"  # SD1, SD2 and SDXL VAEs share their shapes
            supported = vae[1] == 4 and vae[2] == 2
    elif kind == ModelKind.CONTROLNET:
        layout, found = _controlnet(shapes)
        architecture, supported = found.architecture, found.supported
        properties.update(controlnet_layout=layout, family=found.family)
        if found.reason:
            properties["unsupported_reason"] = found.reason
    elif kind == ModelKind.EMBEDDING:
        architecture, vectors = _embedding(shapes)
        properties["vectors"] = vectors
    elif kind == ModelKind.TEXT_ENCODER:
        encoder, supported = _text_encoder(shapes)
        properties["text_encoder"] = encoder
    if not set(dtypes) <= BUILTIN_DTYPES:
        supported = False
        properties["unsupported_dtypes"] = sorted(set(dtypes) - BUILTIN_DTYPES)
    return Description(architecture=architecture, supported=supported,
                       parameter_count=sum(t.numel for t in header.tensors.values()), dtypes=dtypes,
                       lora_rank=rank, file_metadata=dict(header.metadata), properties=properties)
