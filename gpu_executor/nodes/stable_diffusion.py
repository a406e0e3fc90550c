"""ComfyUI's Stable Diffusion nodes on the built-in engine: loaders, text encoding, conditioning, KSampler,
VAE encode/decode, LoRA and ControlNet. Models are loaded once per executor process and kept (handles.py).

diffusers and transformers are imported when a node first runs, not when the catalog is built: importing them
takes seconds, and an executor must answer Describe quickly after it starts.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from gpu_executor.diffusion.sampling import SAMPLER_NAMES, SCHEDULER_NAMES, LatentFormat, ModelSamplingDiscrete
from gpu_executor.diffusion.sampling import sample as run_sampler
from gpu_executor.diffusion.sampling.noise import prepare_noise
from gpu_executor.engine.runtime import ProgressBar, list_models, model_path

if TYPE_CHECKING:
    from gpu_executor.diffusion.handles import ClipHandle, ModelHandle, VaeHandle
    from gpu_executor.diffusion.models.controlnet import LoadedControlNet


def model_store() -> Any:
    from gpu_executor.diffusion.handles import model_store as store

    return store()


def _vae_ops() -> Any:
    from gpu_executor.diffusion.models import vae

    return vae

MAX_RESOLUTION = 16384
SEED_MAX = 0xFFFFFFFFFFFFFFFF
PREVIEW_EVERY_STEPS = 1
# ComfyUI's latent → RGB approximation for SD1/SD2 latents (its latent2rgb preview).
_LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                            [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])


class _Node:
    CATEGORY = "sampling"
    OUTPUT_NODE = False
    DESCRIPTION = ""


# --- loaders ------------------------------------------------------------------------------------------------------

class CheckpointLoaderSimple(_Node):
    CATEGORY = "model/loaders"
    SEARCH_ALIASES: ClassVar[list[str]] = ["load model", "checkpoint", "model loader", "load checkpoint", "ckpt",
                                           "model"]
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The model used for denoising latents.",
                       "The CLIP model used for encoding text prompts.",
                       "The VAE model used for encoding and decoding images to and from latent space.")
    FUNCTION = "load_checkpoint"
    DESCRIPTION = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (list_models("checkpoints"),
                                           {"tooltip": "The name of the checkpoint (model) to load."})}}

    def load_checkpoint(self, ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        from gpu_executor.diffusion.handles import ClipHandle, ModelHandle, VaeHandle

        models = model_store().checkpoint(model_path("checkpoints", ckpt_name))
        checkpoint = models.checkpoint
        arch = checkpoint.architecture
        clip = ClipHandle(arch.family, dict(checkpoint.text_encoders), models.clip_patch, models=models)
        return ModelHandle(models), clip, VaeHandle(checkpoint.vae, arch.latent_scale, models)


class UNETLoader(_Node):
    CATEGORY = "advanced/loaders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"unet_name": (list_models("diffusion_models") + list_models("unet"),),
                             "weight_dtype": (["default"],)}}

    def load_unet(self, unet_name: str, weight_dtype: str) -> tuple[ModelHandle]:
        from gpu_executor.diffusion.handles import ModelHandle

        return (ModelHandle(model_store().unet(_model_in(("diffusion_models", "unet"), unet_name))),)


class VAELoader(_Node):
    CATEGORY = "loaders"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"vae_name": (list_models("vae"),)}}

    def load_vae(self, vae_name: str) -> tuple[VaeHandle]:
        from gpu_executor.diffusion.handles import VaeHandle

        vae = model_store().vae(model_path("vae", vae_name), 0.18215)
        scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        return (VaeHandle(vae, scale),)


class CLIPLoader(_Node):
    CATEGORY = "advanced/loaders"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    _TYPES: ClassVar[dict[str, tuple[str, str]]] = {"stable_diffusion": ("sd1", "l"), "sd2": ("sd2", "h")}

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_name": (list_models("text_encoders") + list_models("clip"),),
                             "type": (list(cls._TYPES),)}}

    def load_clip(self, clip_name: str, type: str) -> tuple[ClipHandle]:
        from gpu_executor.diffusion.handles import ClipHandle

        family, kind = self._TYPES[type]
        encoder = model_store().clip(_model_in(TEXT_ENCODER_FOLDERS, clip_name), kind)
        return (ClipHandle(family, {kind: encoder}, None),)


class DualCLIPLoader(_Node):
    CATEGORY = "advanced/loaders"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = list_models("text_encoders") + list_models("clip")
        return {"required": {"clip_name1": (names,), "clip_name2": (names,), "type": (["sdxl"],)}}

    def load_clip(self, clip_name1: str, clip_name2: str, type: str) -> tuple[ClipHandle]:
        from gpu_executor.diffusion.handles import ClipHandle

        encoders = {}
        for name in (clip_name1, clip_name2):
            encoder = model_store().clip(_model_in(TEXT_ENCODER_FOLDERS, name), None)
            width = encoder.config.hidden_size
            encoders["l" if width == 768 else "g"] = encoder
        return (ClipHandle("sdxl", encoders, None),)


TEXT_ENCODER_FOLDERS = ("text_encoders", "clip")


def _model_in(folders: tuple[str, ...], name: str) -> Path:
    """The file for a model name in the first of ComfyUI's folders that has it (new name first, legacy after)."""
    for folder in folders[:-1]:
        try:
            return model_path(folder, name)
        except FileNotFoundError:
            continue
    return model_path(folders[-1], name)


def _loaded_lora(lora_name: str) -> str:
    """Loads (once) the LoRA file and returns the key handles name it by."""
    path = model_path("loras", lora_name)
    model_store().lora(path)
    return str(path.resolve())


class LoraLoader(_Node):
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "lora_name": (list_models("loras"),),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
                             "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})}}

    def load_lora(self, model: ModelHandle, clip: ClipHandle, lora_name: str, strength_model: float,
                  strength_clip: float) -> tuple[ModelHandle, ClipHandle]:
        key = _loaded_lora(lora_name)
        new_model = model.with_lora(key, strength_model) if strength_model != 0 else model
        new_clip = clip.with_lora(key, strength_clip) if strength_clip != 0 else clip
        return new_model, new_clip


class LoraLoaderModelOnly(_Node):
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "lora_name": (list_models("loras"),),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})}}

    def load_lora_model_only(self, model: ModelHandle, lora_name: str, strength_model: float) -> tuple[ModelHandle]:
        key = _loaded_lora(lora_name)
        return (model.with_lora(key, strength_model) if strength_model != 0 else model,)


class ControlNetLoader(_Node):
    CATEGORY = "loaders"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"control_net_name": (list_models("controlnet"),)}}

    def load_controlnet(self, control_net_name: str) -> tuple[LoadedControlNet]:
        return (model_store().controlnet(model_path("controlnet", control_net_name)),)


# --- text and conditioning -------------------------------------------------------------------------------------------

class CLIPTextEncode(_Node):
    CATEGORY = "model/conditioning"
    SEARCH_ALIASES: ClassVar[list[str]] = ["text", "prompt", "text prompt", "positive prompt", "negative prompt",
                                           "encode text", "text encoder", "encode prompt"]
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("A conditioning containing the embedded text used to guide the diffusion model.",)
    FUNCTION = "encode"
    DESCRIPTION = "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the " \
                  "diffusion model towards generating specific images."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                                 "tooltip": "The text to be encoded."}),
                             "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."})}}

    def encode(self, clip: ClipHandle, text: str) -> tuple[list[list[Any]]]:
        from gpu_executor.diffusion.text.conditioning import encode_text

        clip.activate()
        cond, pooled = encode_text(clip.family, clip.encoders, text, clip.layer_idx)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer(_Node):
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip": ("CLIP",),
                             "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1})}}

    def set_last_layer(self, clip: ClipHandle, stop_at_clip_layer: int) -> tuple[ClipHandle]:
        return (clip.with_layer(stop_at_clip_layer),)


class ConditioningCombine(_Node):
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    def combine(self, conditioning_1: list[Any], conditioning_2: list[Any]) -> tuple[list[Any]]:
        return (conditioning_1 + conditioning_2,)


class ConditioningSetArea(_Node):
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}
        offset = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {"required": {"conditioning": ("CONDITIONING",), "width": ("INT", size), "height": ("INT", size),
                             "x": ("INT", offset), "y": ("INT", offset),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})}}

    def append(self, conditioning: list[Any], width: int, height: int, x: int, y: int,
               strength: float) -> tuple[list[Any]]:
        area = (height // 8, width // 8, y // 8, x // 8)
        return ([[tensor, {**options, "area": area, "strength": strength, "set_area_to_bounds": False}]
                 for tensor, options in conditioning],)


class ConditioningZeroOut(_Node):
    CATEGORY = "advanced/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "zero_out"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",)}}

    def zero_out(self, conditioning: list[Any]) -> tuple[list[Any]]:
        out = []
        for tensor, options in conditioning:
            updated = dict(options)
            if updated.get("pooled_output") is not None:
                updated["pooled_output"] = torch.zeros_like(updated["pooled_output"])
            out.append([torch.zeros_like(tensor), updated])
        return (out,)


class ControlNetApplyAdvanced(_Node):
    CATEGORY = "conditioning/controlnet"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "control_net": ("CONTROL_NET",), "image": ("IMAGE",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                             "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})}}

    def apply_controlnet(self, positive: list[Any], negative: list[Any], control_net: LoadedControlNet,
                         image: torch.Tensor, strength: float, start_percent: float,
                         end_percent: float) -> tuple[list[Any], list[Any]]:
        from gpu_executor.diffusion.models.controlnet import ControlNetApplication

        if strength == 0:
            return positive, negative
        application = ControlNetApplication(control_net, image, strength, start_percent, end_percent)
        return ([[t, {**o, "control": application, "control_apply_to_uncond": False}] for t, o in positive],
                [[t, {**o, "control": application, "control_apply_to_uncond": False}] for t, o in negative])


class ControlNetApply(_Node):
    CATEGORY = "conditioning/controlnet"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"
    DEPRECATED = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",), "control_net": ("CONTROL_NET",), "image": ("IMAGE",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})}}

    def apply_controlnet(self, conditioning: list[Any], control_net: LoadedControlNet, image: torch.Tensor,
                         strength: float) -> tuple[list[Any]]:
        from gpu_executor.diffusion.models.controlnet import ControlNetApplication

        if strength == 0:
            return (conditioning,)
        application = ControlNetApplication(control_net, image, strength)
        # ComfyUI's old node applies to the positive only and lets the sampler copy it to the negative.
        return ([[t, {**o, "control": application, "control_apply_to_uncond": True}] for t, o in conditioning],)


# --- sampling ------------------------------------------------------------------------------------------------------

def _control_function(model_sampling: ModelSamplingDiscrete) -> Any:
    def control(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, rows: int,
                entries: list[Any]) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        applications = [entry[1].get("control") for entry in entries]
        if not any(applications):
            return None
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for index, application in enumerate(applications):
            if application is None:
                continue
            rows_slice = slice(index * rows, (index + 1) * rows)
            sigma = float(model_sampling.sigma(timestep[rows_slice][:1].cpu()).item())
            residuals = application.residuals(x[rows_slice], timestep[rows_slice], context[rows_slice],
                                              sigma=sigma)
            if residuals is None:
                continue
            if down_total is None:
                down_total = [torch.zeros((x.shape[0], *d.shape[1:]), dtype=d.dtype, device=d.device)
                              for d in residuals.down]
                mid_total = torch.zeros((x.shape[0], *residuals.mid.shape[1:]), dtype=residuals.mid.dtype,
                                        device=residuals.mid.device)
            for total, part in zip(down_total, residuals.down, strict=True):
                total[rows_slice] += part
            assert mid_total is not None
            mid_total[rows_slice] += residuals.mid
        if down_total is None or mid_total is None:
            return None
        return down_total, mid_total

    return control


def model_sampling_for(model: ModelHandle) -> ModelSamplingDiscrete:
    prediction = model.architecture.prediction
    return ModelSamplingDiscrete("v_prediction" if prediction == "v" else "eps")


def _sdxl_conditions(entries: list[Any], rows: int, device: torch.device, dtype: torch.dtype, *,
                     refiner: bool = False) -> dict[str, Any]:
    """SDXL's extra inputs (ComfyUI's SDXL/SDXLRefiner encode_adm): the pooled text embedding and the ids diffusers
    embeds like ComfyUI's Timestep(256). Base: height, width, crop_h, crop_w, target height and width (defaults
    768 px, no crop, target = size). Refiner: height, width, crop_h, crop_w and the aesthetic score (default 6, or
    2.5 for an entry of the negative list: see `_with_prompt_type`)."""
    embeds, ids = [], []
    for _tensor, options in entries:
        pooled = options.get("pooled_output")
        width, height = options.get("width", 768), options.get("height", 768)
        time_ids = [height, width, options.get("crop_h", 0), options.get("crop_w", 0)]
        if refiner:
            default_score = 2.5 if options.get("prompt_type", "") == "negative" else 6.0
            time_ids.append(options.get("aesthetic_score", default_score))
        else:
            time_ids += [options.get("target_height", height), options.get("target_width", width)]
        embeds.append(pooled.expand(rows, -1))
        ids.append(torch.tensor([time_ids] * rows, dtype=torch.float32))
    return {"text_embeds": torch.cat(embeds).to(device, dtype), "time_ids": torch.cat(ids).to(device, dtype)}


def _with_prompt_type(conditioning: list[Any], prompt_type: str) -> list[Any]:
    """The entries with the list they are sampled as ("positive"/"negative"), which ComfyUI passes to the model's
    encode_adm as ``prompt_type`` (an entry's own value wins). Copies: the node outputs are not changed."""
    return [[tensor, {"prompt_type": prompt_type, **options}] for tensor, options in conditioning]


def _preview(denoised: torch.Tensor) -> tuple[str, bytes]:
    """A cheap RGB projection of the first latent (no VAE), as JPEG, at most 512 px."""
    from PIL import Image

    rgb = torch.einsum("chw,cr->hwr", denoised[0, :4].float().cpu(), _LATENT_RGB)
    pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).byte().numpy()
    image = Image.fromarray(pixels)
    image.thumbnail((512, 512))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "image/jpeg", buffer.getvalue()


def common_ksampler(model: ModelHandle, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    positive: list[Any], negative: list[Any], latent: dict[str, Any], denoise: float = 1.0,
                    disable_noise: bool = False, start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> tuple[dict[str, Any]]:
    from gpu_executor.diffusion.denoiser import UNetDenoiser

    store = model_store()
    samples = latent["samples"]
    noise = prepare_noise(samples, seed, latent.get("batch_index"))
    unet = model.activate()
    arch = model.architecture
    model_sampling = model_sampling_for(model)
    added_conditions = None
    if arch.family in ("sdxl", "sdxl_refiner"):
        added_conditions = functools.partial(_sdxl_conditions, refiner=arch.family == "sdxl_refiner")
        positive, negative = _with_prompt_type(positive, "positive"), _with_prompt_type(negative, "negative")
    denoiser = UNetDenoiser(unet, store.placement.device, store.placement.dtype,
                            control=_control_function(model_sampling), added_conditions=added_conditions)
    bar = ProgressBar(steps)

    def callback(info: dict[str, Any]) -> None:
        step = int(info["i"]) + 1
        preview = _preview(info["denoised"]) if step % PREVIEW_EVERY_STEPS == 0 else None
        bar.update_absolute(step, int(info.get("total_steps", steps)), preview)

    result = run_sampler(denoiser, model_sampling, noise, samples, seed=seed, steps=steps, cfg=cfg,
                         sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
                         denoise=denoise, start_step=start_step, last_step=last_step,
                         force_full_denoise=force_full_denoise, disable_noise=disable_noise,
                         noise_mask=latent.get("noise_mask"), callback=callback,
                         latent_format=LatentFormat(scale_factor=arch.latent_scale), device=store.placement.device)
    return ({**latent, "samples": result},)


class KSampler(_Node):
    CATEGORY = "model/sampling"
    SEARCH_ALIASES: ClassVar[list[str]] = ["sampler", "sample", "generate", "denoise", "diffuse", "txt2img", "img2img"]
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    DESCRIPTION = "Uses the provided model, positive and negative conditioning to denoise the latent image."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (list(SAMPLER_NAMES),),
            "scheduler": (list(SCHEDULER_NAMES),),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    def sample(self, model: ModelHandle, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
               positive: list[Any], negative: list[Any], latent_image: dict[str, Any],
               denoise: float = 1.0) -> tuple[dict[str, Any]]:
        return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise)


class KSamplerAdvanced(_Node):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "add_noise": (["enable", "disable"],),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (list(SAMPLER_NAMES),),
            "scheduler": (list(SCHEDULER_NAMES),),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
        }}

    def sample(self, model: ModelHandle, add_noise: str, noise_seed: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, positive: list[Any], negative: list[Any], latent_image: dict[str, Any],
               start_at_step: int, end_at_step: int, return_with_leftover_noise: str) -> tuple[dict[str, Any]]:
        return common_ksampler(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                               latent_image, disable_noise=add_noise == "disable", start_step=start_at_step,
                               last_step=end_at_step, force_full_denoise=return_with_leftover_noise == "disable")


# --- VAE -----------------------------------------------------------------------------------------------------------

class VAEDecode(_Node):
    CATEGORY = "model/latent"
    SEARCH_ALIASES: ClassVar[list[str]] = ["decode", "decode latent", "latent to image", "render latent"]
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image.",)
    FUNCTION = "decode"
    DESCRIPTION = "Decodes latent images back into pixel space images."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
                             "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."})}}

    def decode(self, vae: VaeHandle, samples: dict[str, Any]) -> tuple[torch.Tensor]:
        return (_vae_ops().decode(vae.activate(), samples["samples"]).cpu(),)


class VAEDecodeTiled(_Node):
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",),
                             "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
                             "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32})}}

    def decode(self, vae: VaeHandle, samples: dict[str, Any], tile_size: int, overlap: int = 64
               ) -> tuple[torch.Tensor]:
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        return (_vae_ops().decode_tiled(vae.activate(), samples["samples"], tile_size, overlap).cpu(),)


class VAEEncode(_Node):
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    def encode(self, vae: VaeHandle, pixels: torch.Tensor) -> tuple[dict[str, Any]]:
        return ({"samples": _vae_ops().encode(vae.activate(), pixels).cpu()},)


class VAEEncodeForInpaint(_Node):
    CATEGORY = "latent/inpaint"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",), "mask": ("MASK",),
                             "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})}}

    def encode(self, vae: VaeHandle, pixels: torch.Tensor, mask: torch.Tensor, grow_mask_by: int = 6
               ) -> tuple[dict[str, Any]]:
        # ComfyUI: crop to multiples of 8, resize the mask to the image, grow it, and set masked pixels to grey
        # (0.5) before encoding so the model does not see what it will repaint.
        height, width = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
        mask = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                                               size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        pixels = pixels.clone()
        if pixels.shape[1] != height or pixels.shape[2] != width:
            y_offset, x_offset = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
            pixels = pixels[:, y_offset:height + y_offset, x_offset:width + x_offset, :]
            mask = mask[:, :, y_offset:height + y_offset, x_offset:width + x_offset]
        if grow_mask_by == 0:
            mask_erosion = mask
        else:
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            padding = grow_mask_by // 2
            mask_erosion = torch.clamp(torch.nn.functional.conv2d(mask.round(), kernel, padding=padding), 0, 1)
        keep = (1.0 - mask.round()).squeeze(1)
        for channel in range(3):
            pixels[:, :, :, channel] -= 0.5
            pixels[:, :, :, channel] *= keep
            pixels[:, :, :, channel] += 0.5
        latent = _vae_ops().encode(vae.activate(), pixels).cpu()
        return ({"samples": latent, "noise_mask": mask_erosion[:, :, :height, :width].round()},)


class SetLatentNoiseMask(_Node):
    CATEGORY = "latent/inpaint"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    def set_mask(self, samples: dict[str, Any], mask: torch.Tensor) -> tuple[dict[str, Any]]:
        return ({**samples, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))},)


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (
    CheckpointLoaderSimple, UNETLoader, VAELoader, CLIPLoader, DualCLIPLoader, LoraLoader, LoraLoaderModelOnly,
    ControlNetLoader,
    CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningSetArea, ConditioningZeroOut,
    ControlNetApply, ControlNetApplyAdvanced, KSampler, KSamplerAdvanced, VAEDecode, VAEDecodeTiled, VAEEncode,
    VAEEncodeForInpaint, SetLatentNoiseMask)}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointLoaderSimple": "Load Checkpoint", "UNETLoader": "Load Diffusion Model", "VAELoader": "Load VAE",
    "CLIPLoader": "Load CLIP",
    "DualCLIPLoader": "DualCLIPLoader", "LoraLoader": "Load LoRA", "LoraLoaderModelOnly": "LoraLoaderModelOnly",
    "ControlNetLoader": "Load ControlNet Model", "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "CLIPSetLastLayer": "CLIP Set Last Layer", "ConditioningCombine": "Conditioning (Combine)",
    "ConditioningSetArea": "Conditioning (Set Area)", "ConditioningZeroOut": "ConditioningZeroOut",
    "ControlNetApply": "Apply ControlNet (OLD)", "ControlNetApplyAdvanced": "Apply ControlNet",
    "KSampler": "KSampler", "KSamplerAdvanced": "KSampler (Advanced)", "VAEDecode": "VAE Decode",
    "VAEDecodeTiled": "VAE Decode (Tiled)", "VAEEncode": "VAE Encode",
    "VAEEncodeForInpaint": "VAE Encode (for Inpainting)",
    "SetLatentNoiseMask": "Set Latent Noise Mask",
}
