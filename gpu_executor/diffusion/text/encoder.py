"""Weighted CLIP encoding as ComfyUI does it.

Every 77-token chunk is encoded; when any token has a weight other than 1, an empty prompt is encoded alongside and
each weighted token's vector is moved away from (or toward) the empty prompt's vector at the same position:
z = (z - z_empty) * weight + z_empty. The chunks are concatenated along the token axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gpu_executor.diffusion.text.tokenizer import ClipTokenizer, WeightedToken


@dataclass(frozen=True)
class LayerChoice:
    """Which hidden state to use: None = the last layer (with the final layer norm); a negative index = that many
    layers from the end (-2 is the penultimate, CLIPSetLastLayer's "stop at"), layer-normed when `layer_norm`."""

    index: int | None = None
    layer_norm: bool = True


def _hidden(model: Any, tokens: torch.Tensor, choice: LayerChoice) -> tuple[torch.Tensor, torch.Tensor | None]:
    output = model(input_ids=tokens, output_hidden_states=choice.index is not None)
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = getattr(output, "text_embeds", None)
    if choice.index is None:
        return output.last_hidden_state, pooled
    num_layers = len(output.hidden_states) - 1
    index = choice.index if choice.index < 0 else choice.index - num_layers
    hidden = output.hidden_states[index]
    if choice.layer_norm:
        text_model = getattr(model, "text_model", model)
        hidden = text_model.final_layer_norm(hidden)
    return hidden, pooled


@torch.no_grad()
def encode_chunks(model: Any, tokenizer: ClipTokenizer, chunks: list[list[WeightedToken]],
                  choice: LayerChoice = LayerChoice()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns the conditioning [1, 77 * chunks, width] in float32 and the first chunk's pooled output."""
    weighted = any(t.weight != 1.0 for chunk in chunks for t in chunk)
    rows = [[t.token for t in chunk] for chunk in chunks]
    if weighted:
        rows.append(tokenizer.empty_chunk())
    device = next(model.parameters()).device
    hidden, pooled = _hidden(model, torch.tensor(rows, dtype=torch.long, device=device), choice)
    hidden = hidden.float()
    outputs = []
    for index, chunk in enumerate(chunks):
        z = hidden[index:index + 1].clone()
        if weighted:
            empty = hidden[-1]
            for position, token in enumerate(chunk):
                if token.weight != 1.0:
                    z[0, position] = (z[0, position] - empty[position]) * token.weight + empty[position]
        outputs.append(z)
    first_pooled = pooled[0:1].float() if pooled is not None else None
    return torch.cat(outputs, dim=-2).cpu(), first_pooled.cpu() if first_pooled is not None else None
