"""The executor engine: validates and runs ComfyUI API-format graphs with ComfyUI's semantics.

The core (graph, validation, cache, scheduling, events) imports without torch; node implementations use torch.
"""
