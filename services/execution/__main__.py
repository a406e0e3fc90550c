"""`python -m services.execution`: the execution service on its own (port COMFYMESH_EXECUTION_PORT)."""

from services.runner import run

if __name__ == "__main__":
    run(["execution"])
