"""Which node inputs name model files: ComfyUI's loader conventions, shared by submit-time validation (the control
plane) and the executors that fetch a graph's models before running it. Torch-free."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

# Inputs whose choices are model files (ComfyUI's loader nodes); clip_name1, clip_name2, ... included.
MODEL_INPUTS = re.compile(r"^(ckpt_name|lora_name|vae_name|control_net_name|unet_name|clip_name\d*|style_model_name|"
                          r"gligen_name|hypernetwork_name|upscale_model_name|model_name|clip_vision_name)$")


def is_model_input(input_name: str) -> bool:
    return MODEL_INPUTS.match(input_name) is not None


def model_inputs(graph: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], str, str]]:
    """(node id, the node's inputs, input name, model file name) for each loader input of a plain graph that holds
    a literal name (links are not names). The inputs mapping is the graph's own: a caller may rewrite values."""
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for name, value in inputs.items():
            if isinstance(value, str) and value and is_model_input(name):
                yield str(node_id), inputs, name, value


def model_names(graph: Mapping[str, Any]) -> Iterator[str]:
    """The model file names a plain graph's loader inputs hold."""
    for _node_id, _inputs, _name, value in model_inputs(graph):
        yield value
