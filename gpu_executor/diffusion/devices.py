"""Where models run: CUDA when present (fp16 weights, bf16 where the card prefers it), the CPU otherwise (fp32)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # weights of the UNet and text encoders
    vae_dtype: torch.dtype  # the VAE stays fp32 on fp16 cards: fp16 VAEs overflow into NaNs (black images)


def device_kind() -> str:
    """"cuda" or "cpu": where choose_placement will put models, without initialising CUDA."""
    return "cuda" if os.environ.get("COMFYMESH_DEVICE", "").lower() != "cpu" and torch.cuda.is_available() else "cpu"


def choose_placement() -> Placement:
    """COMFYMESH_DEVICE=cpu forces the CPU (tests, or a machine whose GPU belongs to something else)."""
    if os.environ.get("COMFYMESH_DEVICE", "").lower() != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        bf16 = torch.cuda.is_bf16_supported()
        return Placement(device, torch.float16, torch.bfloat16 if bf16 else torch.float32)
    return Placement(torch.device("cpu"), torch.float32, torch.float32)


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
