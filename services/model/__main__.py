"""`python -m services.model`: the model service on its own (port COMFYMESH_MODEL_PORT)."""

from services.runner import run

if __name__ == "__main__":
    run(["model"])
