"""ComfyUI as the executor's engine: a ComfyUI server the executor starts and supervises (or attaches to), driven
through its HTTP and websocket API. See backend.py for the whole picture."""
