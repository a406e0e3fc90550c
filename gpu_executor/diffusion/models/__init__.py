"""Model files for the built-in engine: safe reading, architecture detection, LDM → diffusers/transformers
conversion and loading (checkpoints, UNets, VAEs, text encoders, LoRAs, ControlNets).

Import the submodules directly (``from gpu_executor.diffusion.models.loader import load_checkpoint``); this package
keeps its import light so the safe-file and detection code can be used without importing diffusers.
"""
