"""Recognise a checkpoint's architecture from its key layout and tensor shapes (LDM/SGM single-file layouts).

Follows the approach of ComfyUI's ``comfy/model_detection.py`` + ``comfy/supported_models.py`` (re-implemented, not
copied): the UNet configuration is derived from the keys and shapes of ``model.diffusion_model.*``, the family from
that configuration (context dim, model channels, ADM input width, linear projections), the prediction type from
marker keys and, for SD2, from a statistic of one weight. Families this engine cannot run (SD3, Flux, Cascade, video
models, ...) are recognised by their own marker keys and reported as unsupported rather than mis-detected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from gpu_executor.diffusion.models.errors import UnsupportedModelError

Prediction = Literal["eps", "v", "edm", "v_edm", "flow", "unknown"]
Shapes = Mapping[str, tuple[int, ...]]
TensorGetter = Callable[[str], torch.Tensor]

SD1 = "sd1"
SD2 = "sd2"
SDXL = "sdxl"
SDXL_REFINER = "sdxl_refiner"
SUPPORTED_FAMILIES = frozenset({SD1, SD2, SDXL, SDXL_REFINER})

# ComfyUI's SD2 v-prediction test (SD20.model_type): population std of this weight above the threshold => v.
SD2_V_PROBE_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_STD_THRESHOLD = 0.09

UNET_PREFIX_CANDIDATES = ("model.diffusion_model.", "model.model.", "diffusion_model.", "net.", "model.", "")


@dataclass(frozen=True)
class UNetConfig:
    """An LDM ``openaimodel.UNetModel`` configuration, in ComfyUI's conventions.

    ``transformer_depth`` has one entry per input res block (level 0 first), ``transformer_depth_output`` one entry
    per output block ordered from the highest-resolution level to the lowest (ComfyUI's order), and
    ``transformer_depth_middle`` is the middle block's depth, -1 for a middle block without attention and -2 for none.
    Exactly one of ``num_heads`` / ``num_head_channels`` is positive (the other is -1).
    """

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    transformer_depth: tuple[int, ...]
    transformer_depth_output: tuple[int, ...]
    transformer_depth_middle: int
    context_dim: int | None
    adm_in_channels: int | None
    use_linear_in_transformer: bool
    num_heads: int = 8
    num_head_channels: int = -1
    temporal: bool = False

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    def depth_per_level(self) -> tuple[tuple[int, ...], ...]:
        """Transformer depth of each input res block, grouped by level."""
        out: list[tuple[int, ...]] = []
        i = 0
        for r in self.num_res_blocks:
            out.append(tuple(self.transformer_depth[i : i + r]))
            i += r
        return tuple(out)

    def output_depth_per_level(self) -> tuple[tuple[int, ...], ...]:
        """Transformer depth of each output block, grouped by level (level 0 first, blocks in execution order)."""
        rev = list(reversed(self.transformer_depth_output))  # execution order: lowest resolution first
        i = 0
        per_level_exec: list[tuple[int, ...]] = []
        for r in reversed(self.num_res_blocks):
            per_level_exec.append(tuple(rev[i : i + r + 1]))
            i += r + 1
        return tuple(reversed(per_level_exec))

    @property
    def attention_levels(self) -> tuple[bool, ...]:
        """Whether each level has cross-attention transformers in its input blocks."""
        return tuple(any(d > 0 for d in lvl) for lvl in self.depth_per_level())

    @property
    def output_attention_levels(self) -> tuple[bool, ...]:
        return tuple(any(d > 0 for d in lvl) for lvl in self.output_depth_per_level())

    def heads_for(self, channels: int) -> int:
        if self.num_heads > 0:
            return self.num_heads
        return max(1, channels // self.num_head_channels)


@dataclass(frozen=True)
class TextEncoderSlot:
    """A text encoder stored in a checkpoint: ``name`` is "l", "h" or "g" (CLIP-L, OpenCLIP ViT-H, OpenCLIP bigG)."""

    name: str
    prefix: str
    layout: Literal["transformers", "open_clip"]
    hidden_size: int
    num_layers: int


@dataclass(frozen=True)
class Architecture:
    family: str
    supported: bool
    prediction: Prediction
    unet: UNetConfig | None = None
    unet_prefix: str = ""
    unet_layout: Literal["ldm", "diffusers", "other"] = "ldm"
    vae_prefix: str | None = None
    text_encoders: tuple[TextEncoderSlot, ...] = ()
    expected_text_encoders: tuple[str, ...] = ()
    latent_scale: float = 0.0
    latent_shift: float = 0.0
    latent_channels: int = 4
    variant: str | None = None
    zsnr: bool = False
    reason: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.text_encoders)


class _Index:
    """Fast prefix lookups over a key set: ``has("a.b.")`` is true when some key starts with ``a.b.``."""

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
        """Number of consecutive integers i (from 0) such that ``pattern.format(i)`` is a key prefix."""
        i = 0
        while self.has(pattern.format(i)):
            i += 1
        return i


def _linear_or_none(shapes: Shapes, key: str, dim: int) -> int | None:
    s = shapes.get(key)
    return s[dim] if s is not None and len(s) > dim else None


def _transformer_depth(idx: _Index, shapes: Shapes, prefix: str) -> tuple[int, int | None, bool | None]:
    """(depth, context_dim, linear_proj) of a SpatialTransformer at ``prefix`` ("...input_blocks.1.1.")."""
    depth = idx.count(prefix + "transformer_blocks.{}.")
    if depth == 0:
        return 0, None, None
    ctx = _linear_or_none(shapes, f"{prefix}transformer_blocks.0.attn2.to_k.weight", 1)
    proj = shapes.get(prefix + "proj_in.weight")
    linear = proj is not None and len(proj) == 2
    return depth, ctx, linear


def detect_unet_config(shapes: Shapes, prefix: str = "", *, require_output: bool = True) -> UNetConfig:
    """Derive the LDM UNet configuration from ``<prefix>input_blocks...`` keys (also used for ControlNets, which
    have no output blocks: pass ``require_output=False``)."""
    idx = _Index(k[len(prefix) :] for k in shapes if k.startswith(prefix))
    sh = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    conv_in = sh.get("input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise UnsupportedModelError("no LDM UNet input convolution (input_blocks.0.0.weight)")
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = sh.get("out.2.weight", (4,))[0]
    adm = _linear_or_none(sh, "label_emb.0.0.weight", 1)
    temporal = any(".time_stack." in k or ".time_mix_blocks." in k or ".time_mixer." in k for k in idx.keys)

    n_in = idx.count("input_blocks.{}.")
    num_res: list[int] = []
    mult: list[int] = []
    depth_in: list[int] = []
    context_dim: int | None = None
    linear: bool | None = None
    res_count = 0
    level_ch = 0
    for n in range(1, n_in):
        p = f"input_blocks.{n}."
        if f"{p}0.op.weight" in sh:
            num_res.append(res_count)
            mult.append(level_ch // model_channels)
            res_count = 0
            continue
        if f"{p}0.in_layers.0.weight" not in sh:
            raise UnsupportedModelError(f"unrecognised UNet input block {n} (neither a res block nor a downsample)")
        ch = sh[f"{p}0.out_layers.3.weight"][0]
        if ch % model_channels:
            raise UnsupportedModelError(f"input block {n} has {ch} channels, not a multiple of {model_channels}")
        res_count += 1
        level_ch = ch
        d, ctx, lin = _transformer_depth(idx, sh, p + "1.")
        depth_in.append(d)
        if d and context_dim is None:
            context_dim, linear = ctx, lin
    num_res.append(res_count)
    mult.append(level_ch // model_channels if level_ch else 1)

    n_out = idx.count("output_blocks.{}.")
    expected_out = sum(r + 1 for r in num_res)
    depth_out_exec: list[int] = []
    if n_out:
        if n_out != expected_out:
            raise UnsupportedModelError(f"{n_out} UNet output blocks where the input blocks imply {expected_out}")
        for n in range(n_out):
            d, ctx, lin = _transformer_depth(idx, sh, f"output_blocks.{n}.1.")
            depth_out_exec.append(d)
            if d and context_dim is None:
                context_dim, linear = ctx, lin
    elif require_output:
        raise UnsupportedModelError("the UNet has no output blocks")

    if idx.has("middle_block.1.proj_in.") or idx.has("middle_block.1.transformer_blocks."):
        depth_mid, ctx, lin = _transformer_depth(idx, sh, "middle_block.1.")
        if context_dim is None:
            context_dim, linear = ctx, lin
    elif idx.has("middle_block.0.in_layers."):
        depth_mid = -1
    else:
        depth_mid = -2

    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(mult),
        num_res_blocks=tuple(num_res),
        transformer_depth=tuple(depth_in),
        transformer_depth_output=tuple(reversed(depth_out_exec)),
        transformer_depth_middle=depth_mid,
        context_dim=context_dim,
        adm_in_channels=adm,
        use_linear_in_transformer=bool(linear),
        num_heads=8 if context_dim == 768 else -1,
        num_head_channels=-1 if context_dim == 768 else 64,
        temporal=temporal,
    )


def detect_diffusers_unet_config(shapes: Shapes, prefix: str = "") -> UNetConfig:
    """The same configuration, derived from a diffusers-layout ``UNet2DConditionModel`` state dict."""
    idx = _Index(k[len(prefix) :] for k in shapes if k.startswith(prefix))
    sh = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    conv_in = sh["conv_in.weight"]
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = sh.get("conv_out.weight", (4,))[0]
    adm = _linear_or_none(sh, "add_embedding.linear_1.weight", 1) or _linear_or_none(
        sh, "class_embedding.linear_1.weight", 1
    )
    levels = idx.count("down_blocks.{}.")
    num_res: list[int] = []
    mult: list[int] = []
    depth_in: list[int] = []
    context_dim: int | None = None
    linear: bool | None = None
    for i in range(levels):
        r = idx.count(f"down_blocks.{i}.resnets.{{}}.")
        num_res.append(r)
        mult.append(sh[f"down_blocks.{i}.resnets.0.conv2.weight"][0] // model_channels)
        for j in range(r):
            d, ctx, lin = _transformer_depth(idx, sh, f"down_blocks.{i}.attentions.{j}.")
            depth_in.append(d)
            if d and context_dim is None:
                context_dim, linear = ctx, lin
    depth_out_exec: list[int] = []
    for u in range(levels):
        for j in range(num_res[levels - 1 - u] + 1):
            d, ctx, lin = _transformer_depth(idx, sh, f"up_blocks.{u}.attentions.{j}.")
            depth_out_exec.append(d)
            if d and context_dim is None:
                context_dim, linear = ctx, lin
    if idx.has("mid_block.attentions.0."):
        depth_mid, ctx, lin = _transformer_depth(idx, sh, "mid_block.attentions.0.")
        if context_dim is None:
            context_dim, linear = ctx, lin
    elif idx.has("mid_block.resnets.0."):
        depth_mid = -1
    else:
        depth_mid = -2
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(mult),
        num_res_blocks=tuple(num_res),
        transformer_depth=tuple(depth_in),
        transformer_depth_output=tuple(reversed(depth_out_exec)),
        transformer_depth_middle=depth_mid,
        context_dim=context_dim,
        adm_in_channels=adm,
        use_linear_in_transformer=bool(linear),
        num_heads=8 if context_dim == 768 else -1,
        num_head_channels=-1 if context_dim == 768 else 64,
    )


# Marker keys (relative to the diffusion-model prefix) of families this engine recognises but does not run.
# Order matters where markers overlap (Chroma carries Flux's double blocks too).
_OTHER_FAMILIES: tuple[tuple[str, str, Prediction, tuple[str, ...]], ...] = (
    ("sd3", "joint_blocks.0.context_block.attn.qkv.weight", "flow", ("l", "g", "t5xxl")),
    ("stable_cascade", "clf.1.weight", "eps", ()),
    ("stable_audio", "transformer.rotary_pos_emb.inv_freq", "v", ()),
    ("aura_flow", "double_layers.0.attn.w1q.weight", "flow", ()),
    ("hunyuan_dit", "mlp_t5.0.weight", "v", ()),
    ("chroma", "distilled_guidance_layer.0.norms.0.scale", "flow", ("t5xxl",)),
    ("hunyuan_video", "txt_in.individual_token_refiner.blocks.0.norm1.weight", "flow", ()),
    ("flux", "double_blocks.0.img_attn.norm.key_norm.scale", "flow", ("l", "t5xxl")),
    ("mochi", "t5_yproj.weight", "flow", ()),
    ("ltxv", "adaln_single.emb.timestep_embedder.linear_1.bias", "flow", ()),
    ("pixart", "t_block.1.weight", "eps", ()),
    ("lumina2", "cap_embedder.1.weight", "flow", ()),
    ("wan", "head.modulation", "flow", ()),
    ("hidream", "caption_projection.0.linear.weight", "flow", ()),
    ("flux_diffusers", "single_transformer_blocks.0.attn.to_q.weight", "flow", ()),
    ("sd3_diffusers", "transformer_blocks.0.attn.add_q_proj.weight", "flow", ()),
)

_LATENT_FORMATS: Mapping[str, tuple[float, float, int]] = {
    SD1: (0.18215, 0.0, 4),
    SD2: (0.18215, 0.0, 4),
    SDXL: (0.13025, 0.0, 4),
    SDXL_REFINER: (0.13025, 0.0, 4),
    "sd3": (1.5305, 0.0609, 16),
    "flux": (0.3611, 0.1159, 16),
    "chroma": (0.3611, 0.1159, 16),
}


def _find_prefix(idx: _Index, markers: Iterable[str]) -> tuple[str, str] | None:
    marker_list = list(markers)
    for prefix in UNET_PREFIX_CANDIDATES:
        for marker in marker_list:
            if prefix + marker in idx.keys:
                return prefix, marker
    return None


def _text_encoders(idx: _Index, shapes: Shapes) -> list[TextEncoderSlot]:
    slots: list[TextEncoderSlot] = []
    candidates = (
        "cond_stage_model.transformer.",
        "cond_stage_model.model.",
        "conditioner.embedders.0.transformer.",
        "conditioner.embedders.0.model.",
        "conditioner.embedders.1.model.",
        "conditioner.embedders.1.transformer.",
        "text_encoders.clip_l.transformer.",
        "text_encoders.clip_g.transformer.",
    )
    for prefix in candidates:
        slot = text_encoder_slot(idx, shapes, prefix)
        if slot is not None:
            slots.append(slot)
    return slots


def text_encoder_slot(idx: _Index | Iterable[str], shapes: Shapes, prefix: str) -> TextEncoderSlot | None:
    """Describe the CLIP text encoder stored under ``prefix`` (transformers or OpenCLIP layout), if any."""
    index = idx if isinstance(idx, _Index) else _Index(idx)
    if index.has(prefix + "transformer.resblocks."):
        emb = shapes.get(prefix + "token_embedding.weight")
        layers = index.count(prefix + "transformer.resblocks.{}.")
        layout: Literal["transformers", "open_clip"] = "open_clip"
    else:
        for inner in ("text_model.", ""):
            emb = shapes.get(f"{prefix}{inner}embeddings.token_embedding.weight")
            if emb is not None:
                layers = index.count(f"{prefix}{inner}encoder.layers.{{}}.")
                break
        else:
            return None
        layout = "transformers"
    if emb is None or len(emb) != 2:
        return None
    width = emb[1]
    name = {768: "l", 1024: "h", 1280: "g"}.get(width)
    if name is None:
        name = "l" if layout == "transformers" else ("g" if width > 1024 else "h")
    return TextEncoderSlot(name=name, prefix=prefix, layout=layout, hidden_size=width, num_layers=layers)


def classify_unet(cfg: UNetConfig) -> tuple[str, str | None, str | None]:
    """(family, variant, reason-if-unsupported) from the UNet configuration, mirroring ComfyUI's model table."""
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
    if (
        cfg.model_channels == 384
        and cfg.context_dim == 1280
        and cfg.adm_in_channels == 2560
        and cfg.use_linear_in_transformer
    ):
        return SDXL_REFINER, None, None
    if (
        cfg.model_channels == 320
        and cfg.context_dim == 2048
        and cfg.adm_in_channels == 2816
        and cfg.use_linear_in_transformer
    ):
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


def _sd2_prediction(
    shapes: Shapes, prefix: str, cfg: UNetConfig, get_tensor: TensorGetter | None, layout: str
) -> Prediction:
    if cfg.in_channels != 4:  # SD2 inpainting models are eps
        return "eps"
    probe = SD2_V_PROBE_KEY
    if layout == "diffusers":
        from gpu_executor.diffusion.models.convert import UNetKeyMap  # convert imports this module

        try:
            probe = UNetKeyMap(cfg).to_diffusers(SD2_V_PROBE_KEY)
        except KeyError:
            return "eps"
    key = prefix + probe
    if key not in shapes:
        return "eps"
    if get_tensor is None:
        return "unknown"
    w = get_tensor(key).detach().to(torch.float32)
    return "v" if float(torch.std(w, unbiased=False)) > SD2_V_STD_THRESHOLD else "eps"


def _count_matching(keys: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return len(found)


def _other_family_details(family: str, prefix: str, shapes: Shapes) -> dict[str, object]:
    keys = [k[len(prefix) :] for k in shapes if k.startswith(prefix)]
    details: dict[str, object] = {}
    if family == "sd3":
        xe = shapes.get(prefix + "x_embedder.proj.weight")
        if xe is not None:
            details.update(depth=xe[0] // 64, hidden_size=xe[0], in_channels=xe[1], patch_size=xe[2])
        details["joint_blocks"] = _count_matching(keys, r"joint_blocks\.(\d+)\.")
        y = shapes.get(prefix + "y_embedder.mlp.0.weight")
        if y is not None:
            details["adm_in_channels"] = y[1]
        ctx = shapes.get(prefix + "context_embedder.weight")
        if ctx is not None:
            details["context_in_dim"] = ctx[1]
    elif family in ("flux", "chroma"):
        img_in = shapes.get(prefix + "img_in.weight")
        if img_in is not None:
            details.update(hidden_size=img_in[0], in_channels=img_in[1] // 4)
        details["depth"] = _count_matching(keys, r"double_blocks\.(\d+)\.")
        details["depth_single_blocks"] = _count_matching(keys, r"single_blocks\.(\d+)\.")
        details["guidance_embed"] = prefix + "guidance_in.in_layer.weight" in shapes
    return details


def detect_architecture(keys_and_shapes: Shapes, *, get_tensor: TensorGetter | None = None) -> Architecture:
    """Recognise a checkpoint from its keys and shapes.

    ``get_tensor`` (key -> tensor) is needed only for SD2, whose v-prediction test looks at one weight's values
    (ComfyUI: population std of ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` > 0.09); without it an SD2
    checkpoint that has that weight gets ``prediction="unknown"``.
    """
    shapes = keys_and_shapes
    idx = _Index(shapes.keys())
    vae_prefix = next((p for p in ("first_stage_model.", "vae.") if idx.has(p + "decoder.")), None)

    other = _find_prefix(idx, (marker for _, marker, _, _ in _OTHER_FAMILIES))
    unet_at = _find_prefix(idx, ("input_blocks.0.0.weight",))
    diffusers_at = None if unet_at else _find_prefix(idx, ("down_blocks.0.resnets.0.norm1.weight",))

    if other is not None and unet_at is None:
        prefix, marker = other
        family, _, other_prediction, expected = next(f for f in _OTHER_FAMILIES if f[1] == marker)
        scale, shift, channels = _LATENT_FORMATS.get(family, (0.0, 0.0, 16))
        variant = None
        if family == "flux":
            variant = "dev" if prefix + "guidance_in.in_layer.weight" in shapes else "schnell"
        return Architecture(
            family=family,
            supported=False,
            prediction=other_prediction,
            unet_prefix=prefix,
            unet_layout="other",
            vae_prefix=vae_prefix,
            text_encoders=tuple(_text_encoders(idx, shapes)),
            expected_text_encoders=expected,
            latent_scale=scale,
            latent_shift=shift,
            latent_channels=channels,
            variant=variant,
            reason=f"{family} checkpoints are recognised but not supported by this engine",
            details=_other_family_details(family, prefix, shapes),
        )

    if unet_at is None and diffusers_at is None:
        return Architecture(
            family="unknown",
            supported=False,
            prediction="unknown",
            vae_prefix=vae_prefix,
            text_encoders=tuple(_text_encoders(idx, shapes)),
            reason="no diffusion model found (no UNet or known DiT marker keys)",
        )

    if unet_at is not None:
        prefix = unet_at[0]
        layout: Literal["ldm", "diffusers"] = "ldm"
        cfg = detect_unet_config(shapes, prefix)
    else:
        assert diffusers_at is not None
        prefix = diffusers_at[0]
        layout = "diffusers"
        cfg = detect_diffusers_unet_config(shapes, prefix)

    family, variant, reason = classify_unet(cfg)
    prediction: Prediction = "eps"
    zsnr = False
    if family == SD2:
        prediction = _sd2_prediction(shapes, prefix, cfg, get_tensor, layout)
    elif family == SDXL:
        if "edm_mean" in shapes and "edm_std" in shapes:
            prediction, reason = "edm", "Playground v2.5 (EDM, SDXL latent mean/std) is not supported"
            variant = "playground_2_5"
        elif "edm_vpred.sigma_max" in shapes:
            prediction, reason = "v_edm", "EDM v-prediction SDXL models (CosXL) are not supported"
        elif "v_pred" in shapes:
            prediction = "v"
        zsnr = "ztsnr" in shapes
    expected = {SD1: ("l",), SD2: ("h",), SDXL: ("l", "g"), SDXL_REFINER: ("g",)}.get(family, ())
    scale, shift, channels = _LATENT_FORMATS.get(family, (0.18215, 0.0, 4))
    if family in (SD1,):
        cfg = _with_heads(cfg, num_heads=8)
    elif family in (SD2, SDXL, SDXL_REFINER):
        cfg = _with_heads(cfg, num_head_channels=64)
    return Architecture(
        family=family,
        supported=reason is None,
        prediction=prediction,
        unet=cfg,
        unet_prefix=prefix,
        unet_layout=layout,
        vae_prefix=vae_prefix,
        text_encoders=tuple(_text_encoders(idx, shapes)),
        expected_text_encoders=expected,
        latent_scale=scale,
        latent_shift=shift,
        latent_channels=channels,
        variant=variant,
        zsnr=zsnr,
        reason=reason,
    )


def _with_heads(cfg: UNetConfig, *, num_heads: int = -1, num_head_channels: int = -1) -> UNetConfig:
    return replace(cfg, num_heads=num_heads, num_head_channels=num_head_channels)
