"""Shared pieces of the built-in nodes: the node base class, limits, and ComfyUI's batch/compositing helpers."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

# ComfyUI's MAX_RESOLUTION (nodes.py): the upper bound of every width/height/x/y widget.
MAX_RESOLUTION = 16384

InputTypes = dict[str, Any]


class BuiltinNode:
    """Defaults shared by the built-in node classes (the V1 node API the engine reads)."""

    RETURN_TYPES: ClassVar[tuple[str, ...]] = ()
    FUNCTION: ClassVar[str] = ""
    CATEGORY: ClassVar[str] = ""
    OUTPUT_NODE: ClassVar[bool] = False
    DESCRIPTION: ClassVar[str] = ""


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Cut or tile `tensor` along `dim` to `batch_size` entries (comfy.utils.repeat_to_batch_size)."""
    have = tensor.shape[dim]
    if have > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if have < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = math.ceil(batch_size / have)
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make two IMAGE tensors agree on channels (node_helpers.image_alpha_fix).

    A source with more channels than the destination loses the extra ones; a source with fewer (RGB onto RGBA)
    gets an opaque alpha channel.
    """
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = F.pad(source, (0, 1))
        source[..., -1] = 1.0
    return destination, source


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None = None,
    multiplier: int = 8,
    resize_source: bool = False,
) -> torch.Tensor:
    """Paste `source` onto `destination` ([B,C,H,W], modified in place) at pixel x,y (nodes_mask.composite).

    Positions are in units of `multiplier` (8 for latents, 1 for images); the source is tiled to the destination's
    batch, the optional mask is resized bilinearly to the source and clipped to the visible part.
    """
    source = source.to(destination.device)
    if resize_source:
        source = F.interpolate(source, size=(destination.shape[-2], destination.shape[-1]), mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])

    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]

    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = mask.to(destination.device, copy=True)
        weight = F.interpolate(
            weight.reshape((-1, 1, weight.shape[-2], weight.shape[-1])),
            size=(source.shape[-2], source.shape[-1]),
            mode="bilinear",
        )
        weight = repeat_to_batch_size(weight, source.shape[0])

    # Only the part of the source that lands inside the destination is written.
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    weight = weight[:, :, :visible_h, :visible_w]
    if weight.ndim < source.ndim:
        weight = weight.unsqueeze(1)
    keep = torch.ones_like(weight) - weight

    pasted = weight * source[..., :visible_h, :visible_w]
    kept = keep * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = pasted + kept
    return destination
