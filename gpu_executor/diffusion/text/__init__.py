"""Text conditioning as ComfyUI does it: prompt emphasis, CLIP tokenization in 77-token chunks, weighted encoding."""
