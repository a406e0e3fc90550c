"""The built-in node pack: ComfyUI's core image, mask, latent, file and primitive nodes, and the Stable Diffusion
nodes (loaders, text encoding, KSampler, VAE, LoRA, ControlNet).

The engine loads `NODE_CLASS_MAPPINGS` (class_type → node class, V1 node API) and `NODE_DISPLAY_NAME_MAPPINGS`
(class_type → display name) from here, like a custom node pack.
"""

from __future__ import annotations

from typing import Any

from gpu_executor.nodes import files, images, latents, masks, primitives, stable_diffusion

_MODULES = (files, images, masks, latents, primitives, stable_diffusion)

NODE_CLASS_MAPPINGS: dict[str, type[Any]] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _MODULES:
    _clash = NODE_CLASS_MAPPINGS.keys() & _module.NODE_CLASS_MAPPINGS.keys()
    if _clash:
        raise RuntimeError(f"built-in node defined twice: {sorted(_clash)}")
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
