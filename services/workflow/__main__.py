"""`python -m services.workflow`: the workflow service on its own (port COMFYMESH_WORKFLOW_PORT)."""

from services.runner import run

if __name__ == "__main__":
    run(["workflow"])
