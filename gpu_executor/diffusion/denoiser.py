"""The model callable the sampler drives: a diffusers UNet fed ComfyUI conditioning entries.

The sampler (sampling/ksampler.py) calls `denoiser(x_in, timestep, entries)` with the already scaled input, the
float training timestep (one per row) and one conditioning entry `[tensor, options]` per chunk of rows. Text
embeddings of different lengths are repeated to a common length the way ComfyUI concatenates them; ControlNet
residuals are added when an entry carries a "control" (ControlNetApply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gpu_executor.diffusion.sampling.conditioning import pad_cross_attention

# control(x_in, timestep, context, rows_per_entry, entries) -> (down residuals, mid residual) or None
ControlFunction = Callable[[Tensor, Tensor, Tensor, int, list[Any]], tuple[list[Tensor], Tensor] | None]


class UNetDenoiser:
    def __init__(self, unet: Any, device: torch.device, dtype: torch.dtype,
                 control: ControlFunction | None = None,
                 added_conditions: Callable[..., dict[str, Tensor]] | None = None) -> None:
        self.unet = unet
        self.device = device
        self.dtype = dtype
        self.control = control
        self.added_conditions = added_conditions  # SDXL: pooled text embeddings and size ids

    @torch.no_grad()
    def __call__(self, x_in: Tensor, timestep: Tensor, conds: list[Any]) -> Tensor:
        entries = conds
        rows = x_in.shape[0] // max(len(entries), 1)
        contexts = []
        for entry in entries:
            tensor = entry[0]
            contexts.append(tensor.repeat(rows // tensor.shape[0], 1, 1) if tensor.shape[0] != rows else tensor)
        context = pad_cross_attention(contexts).to(self.device, self.dtype)
        sample = x_in.to(self.device, self.dtype)
        timesteps = timestep.to(self.device)
        kwargs: dict[str, Any] = {}
        if self.added_conditions is not None:
            kwargs["added_cond_kwargs"] = self.added_conditions(entries, rows, self.device, self.dtype)
        if self.control is not None:
            residuals = self.control(sample, timesteps, context, rows, entries)
            if residuals is not None:
                kwargs["down_block_additional_residuals"] = residuals[0]
                kwargs["mid_block_additional_residual"] = residuals[1]
        output: Tensor = self.unet(sample, timesteps, encoder_hidden_states=context, **kwargs).sample
        return output.float()
