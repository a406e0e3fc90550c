"""`python -m services.auth`: the auth service on its own (port COMFYMESH_AUTH_PORT)."""

from services.runner import run

if __name__ == "__main__":
    run(["auth"])
