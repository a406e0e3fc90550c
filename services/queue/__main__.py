"""`python -m services.queue`: the queue service on its own (port COMFYMESH_QUEUE_PORT)."""

from services.runner import run

if __name__ == "__main__":
    run(["queue"])
