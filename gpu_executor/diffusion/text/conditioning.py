"""CLIPTextEncode per model family, as ComfyUI configures each family's text encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpu_executor.diffusion.text.encoder import LayerChoice, encode_chunks
from gpu_executor.diffusion.text.tokenizer import clip_tokenizer, tokenizer_dir

# family → [(encoder name, pad with the end token, default layer, layer-norm the chosen hidden layer)]
FAMILY_ENCODERS: dict[str, list[tuple[str, bool, int | None, bool]]] = {
    "sd1": [("l", True, None, True)],
    "sd2": [("h", False, -2, True)],
    "sdxl": [("l", True, -2, False), ("g", False, -2, False)],
    "sdxl_refiner": [("g", False, -2, False)],
}


_configured_dir: Path | None = None


def configure_tokenizer_dir(directory: Path | None) -> None:
    """Set once by the process (executor or runner) from COMFYMESH_TOKENIZER_DIR."""
    global _configured_dir
    _configured_dir = directory


def _tokenizer_dir() -> Path:
    return tokenizer_dir(_configured_dir)


def encode_text(family: str, encoders: dict[str, Any], text: str, layer_idx: int | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conditioning tensor [1, 77·k, width] and the pooled output (the last encoder's, as ComfyUI uses)."""
    directory = _tokenizer_dir()
    outputs: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for name, pad_with_end, default_layer, layer_norm in FAMILY_ENCODERS[family]:
        if name not in encoders:
            raise ValueError(f"the CLIP model has no {name!r} text encoder, which {family} needs")
        tokenizer = clip_tokenizer(directory, pad_with_end)
        # CLIPSetLastLayer's -1 is the last layer itself; with the layer norm that equals the default output.
        index = layer_idx if layer_idx is not None else default_layer
        choice = LayerChoice(index, layer_norm if index is not None else True)
        cond, pooled = encode_chunks(encoders[name], tokenizer, tokenizer.tokenize(text), choice)
        outputs.append(cond)
    if len(outputs) > 1:
        length = min(o.shape[1] for o in outputs)
        return torch.cat([o[:, :length] for o in outputs], dim=-1), pooled
    return outputs[0], pooled
