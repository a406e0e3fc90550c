"""Stable Diffusion on torch for the built-in engine: checkpoint loading (models/), sampling (sampling/), text
encoding, and the ComfyUI nodes that use them. CUDA when available, the CPU otherwise."""
