"""`python -m services.webhook`: the webhook service on its own (port COMFYMESH_WEBHOOK_PORT)."""

from services.runner import run

if __name__ == "__main__":
    run(["webhook"])
