"""ComfyUI's sampling stack in plain torch: noise schedules, k-diffusion samplers, CFG and conditioning areas,
inpainting masks and the KSampler/KSamplerAdvanced semantics, matching ComfyUI's numerics for the same seed.

Modules: `model_sampling` (sigma table, prediction types), `schedulers`, `samplers`, `noise`, `conditioning`,
`ksampler` (the entry point, `ksampler.sample`).
"""

from gpu_executor.diffusion.sampling.ksampler import (
    SD15_LATENT_FORMAT,
    SDXL_LATENT_FORMAT,
    Denoiser,
    LatentFormat,
    compute_sigmas,
    sample,
)
from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete, ModelSamplingDiscreteDistilled
from gpu_executor.diffusion.sampling.noise import prepare_mask, prepare_noise
from gpu_executor.diffusion.sampling.samplers import SAMPLER_NAMES
from gpu_executor.diffusion.sampling.schedulers import SCHEDULER_NAMES, calculate_sigmas

__all__ = [
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "SD15_LATENT_FORMAT",
    "SDXL_LATENT_FORMAT",
    "Denoiser",
    "LatentFormat",
    "ModelSamplingDiscrete",
    "ModelSamplingDiscreteDistilled",
    "calculate_sigmas",
    "compute_sigmas",
    "prepare_mask",
    "prepare_noise",
    "sample",
]
