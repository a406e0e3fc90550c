"""ControlNets: load LDM-layout (``control_model.*`` or unprefixed) and diffusers-layout files into diffusers'
``ControlNetModel`` built from a config derived from the file's shapes, and compute residuals the way ComfyUI's
``ControlNet.get_control`` feeds them to the UNet.

Hint handling follows ComfyUI: the IMAGE hint ``[B, H, W, C]`` (0..1) becomes ``[B, C, H, W]``, is resized with
``nearest-exact`` after a centre crop to the aspect of the latent × 8 (``common_upscale(..., "center")``), broadcast
to the latent batch, and the residuals are multiplied by the strength. ``start_percent``/``end_percent`` select the
sigma range in which the ControlNet is applied (``percent_to_sigma`` of the model's discrete schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.models.controlnets.controlnet import ControlNetModel

from gpu_executor.diffusion.models.configs import controlnet_diffusers_config
from gpu_executor.diffusion.models.convert import UNetKeyMap
from gpu_executor.diffusion.models.detection import (
    SUPPORTED_FAMILIES,
    UNetConfig,
    classify_unet,
    detect_diffusers_unet_config,
    detect_unet_config,
)
from gpu_executor.diffusion.models.errors import UnsupportedModelError
from gpu_executor.diffusion.models.loader import Device, materialize, new_module, quiet_construction
from gpu_executor.diffusion.models.safetensors_file import PathLike, load_tensors, read_header
from gpu_executor.imaging import common_upscale


@dataclass
class LoadedControlNet:
    path: Path
    model: ControlNetModel
    unet_config: UNetConfig
    family: str
    layout: str
    hint_channels: int


def _hint_convs(shapes: dict[str, tuple[int, ...]], prefix: str) -> list[tuple[int, ...]]:
    convs: list[tuple[int, ...]] = []
    k = 0
    while f"{prefix}input_hint_block.{k}.weight" in shapes:
        convs.append(shapes[f"{prefix}input_hint_block.{k}.weight"])
        k += 2
    return convs


def _hint_channels(convs: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Widths of the hint encoder: the first conv's, then each stride-2 conv's (every second after the first)."""
    if len(convs) < 2 or len(convs) % 2:
        raise UnsupportedModelError(f"unexpected ControlNet hint encoder with {len(convs)} convolutions")
    return (convs[0][0], *(convs[i][0] for i in range(2, len(convs) - 1, 2)))


def load_controlnet(path: PathLike, *, device: Device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedControlNet:
    p = Path(path)
    header = read_header(p)
    shapes = header.shapes()
    if "lora_controlnet" in shapes:
        raise UnsupportedModelError(f"{p.name}: Control-LoRA files are not supported")
    if "difference" in shapes:
        raise UnsupportedModelError(f"{p.name}: difference ControlNets (relative to a base model) are not supported")
    if any(k.startswith(("controlnet_blocks.", "controlnet_single_blocks.")) for k in shapes):
        raise UnsupportedModelError(f"{p.name}: DiT (SD3/Flux) ControlNets are not supported")
    if any(k.startswith("control_add_embedding.") for k in shapes):
        raise UnsupportedModelError(f"{p.name}: ControlNet-Union files are not supported")

    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        layout = "diffusers"
        cfg = detect_diffusers_unet_config(shapes)
        n_blocks = 0
        while f"controlnet_cond_embedding.blocks.{n_blocks}.weight" in shapes:
            n_blocks += 1
        convs = [shapes["controlnet_cond_embedding.conv_in.weight"]]
        convs += [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"] for i in range(n_blocks)]
        convs.append(shapes["controlnet_cond_embedding.conv_out.weight"])
        prefix = ""
    else:
        found = next((pre for pre in ("control_model.", "") if f"{pre}zero_convs.0.0.weight" in shapes), None)
        if found is None:
            raise UnsupportedModelError(f"{p.name}: not a ControlNet (T2I adapters are not supported)")
        layout, prefix = "ldm", found
        cfg = detect_unet_config(shapes, prefix, require_output=False)
        convs = _hint_convs(shapes, prefix)
    family, _, reason = classify_unet(cfg)
    if family not in SUPPORTED_FAMILIES or reason:
        raise UnsupportedModelError(f"{p.name}: a ControlNet for {family} ({reason or 'not supported'})")
    hint = _hint_channels(convs)
    hint_in = convs[0][1]
    config = controlnet_diffusers_config(cfg, family, hint_in=hint_in, hint_channels=hint)
    tensors = load_tensors(p, prefix=prefix, strip_prefix=True, device=device)
    sd = UNetKeyMap(cfg, controlnet=True, hint_convs=len(convs)).convert(tensors) if layout == "ldm" else tensors
    model: ControlNetModel = materialize(
        quiet_construction(lambda: new_module(ControlNetModel, **config)),
        sd,
        device=device,
        dtype=dtype,
        what="ControlNet",
    )
    return LoadedControlNet(path=p, model=model, unet_config=cfg, family=family, layout=layout, hint_channels=hint_in)


# ---------------------------------------------------------------------------------------------- hint / schedule


def common_upscale_center(
    samples: torch.Tensor, width: int, height: int, method: str = "nearest-exact"
) -> torch.Tensor:
    """ComfyUI ``common_upscale(samples, width, height, method, "center")`` for ``[B, C, H, W]`` tensors."""
    return common_upscale(samples, width, height, method, "center")


def broadcast_image_to(tensor: torch.Tensor, target_batch: int, batched_number: int = 1) -> torch.Tensor:
    """ComfyUI's ``broadcast_image_to``: repeat a hint batch over the (cond/uncond-batched) latent batch."""
    if tensor.shape[0] == 1:
        return tensor
    per_batch = target_batch // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        reps = [tensor] * (per_batch // tensor.shape[0]) + [tensor[: per_batch % tensor.shape[0]]]
        tensor = torch.cat(reps, dim=0)
    if tensor.shape[0] == target_batch:
        return tensor
    return torch.cat([tensor] * batched_number, dim=0)


def prepare_hint(
    image: torch.Tensor, latent: torch.Tensor, *, batched_number: int = 1, method: str = "nearest-exact"
) -> torch.Tensor:
    """IMAGE hint ``[B, H, W, C]`` in 0..1 → ``[B', C, 8h, 8w]`` for a latent ``[B', 4, h, w]``."""
    hint = image.movedim(-1, 1).to(torch.float32)
    hint = common_upscale_center(hint, latent.shape[3] * 8, latent.shape[2] * 8, method)
    if hint.shape[0] != latent.shape[0]:
        hint = broadcast_image_to(hint, latent.shape[0], batched_number)
    return hint


class DiscreteSchedule:
    """ComfyUI's ``ModelSamplingDiscrete`` for SD1/SD2/SDXL (scaled-linear betas 0.00085 → 0.012, 1000 steps)."""

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> None:
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.float().log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


@dataclass(frozen=True)
class ControlResiduals:
    """Residuals in diffusers' convention: one per UNet skip connection (``down_block_additional_residuals``) and
    one for the middle block (``mid_block_additional_residual``)."""

    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor


def controlnet_active(
    sigma: float, start_percent: float, end_percent: float, schedule: DiscreteSchedule | None = None
) -> bool:
    """Whether a ControlNet applied over [start_percent, end_percent] of the schedule acts at ``sigma``."""
    sched = schedule or DiscreteSchedule()
    high, low = sched.percent_to_sigma(start_percent), sched.percent_to_sigma(end_percent)
    return not (sigma > high or sigma < low)


@torch.inference_mode()
def control_residuals(
    controlnet: LoadedControlNet,
    *,
    hint: torch.Tensor,
    x: torch.Tensor,
    timestep: torch.Tensor | float,
    context: torch.Tensor,
    strength: float = 1.0,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    batched_number: int = 1,
    hint_is_prepared: bool = False,
) -> ControlResiduals:
    """Run the ControlNet on the UNet input ``x`` ``[B, 4, h, w]`` (already scaled for the model, as ComfyUI's
    ``calculate_input`` does), ``timestep`` (the model's discrete timestep) and ``context`` ``[B, 77·k, C]``.
    ``hint`` is the IMAGE ``[B, H, W, C]`` in 0..1 (or, with ``hint_is_prepared``, a ``[B, C, 8h, 8w]`` tensor)."""
    model: Any = controlnet.model  # diffusers classes carry no type information mypy can use
    param = next(model.parameters())
    cond = hint if hint_is_prepared else prepare_hint(hint, x, batched_number=batched_number)
    t = timestep if isinstance(timestep, torch.Tensor) else torch.tensor([timestep])
    kwargs: dict[str, Any] = {}
    if added_cond_kwargs is not None:
        kwargs["added_cond_kwargs"] = {k: v.to(param.device, param.dtype) for k, v in added_cond_kwargs.items()}
    down, mid = model(
        x.to(param.device, param.dtype),
        t.to(param.device),
        encoder_hidden_states=context.to(param.device, param.dtype),
        controlnet_cond=cond.to(param.device, param.dtype),
        conditioning_scale=float(strength),
        return_dict=False,
        **kwargs,
    )
    out_dtype = x.dtype
    return ControlResiduals(down=tuple(d.to(out_dtype) for d in down), mid=mid.to(out_dtype))


@dataclass
class ControlNetApplication:
    """ControlNetApplyAdvanced: a ControlNet, its hint image, strength and active range."""

    controlnet: LoadedControlNet
    image: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0

    def residuals(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | float,
        context: torch.Tensor,
        *,
        sigma: float | None = None,
        schedule: DiscreteSchedule | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        batched_number: int = 1,
    ) -> ControlResiduals | None:
        """Residuals for this step, or None outside [start_percent, end_percent] (needs ``sigma``)."""
        if sigma is not None and not controlnet_active(sigma, self.start_percent, self.end_percent, schedule):
            return None
        if self.strength == 0.0 or math.isnan(self.strength):
            return None
        return control_residuals(
            self.controlnet,
            hint=self.image,
            x=x,
            timestep=timestep,
            context=context,
            strength=self.strength,
            added_cond_kwargs=added_cond_kwargs,
            batched_number=batched_number,
        )
