"""`python -m services.control_plane`: every control-plane service in one process (COMFYMESH_CONTROL_PLANE_PORT).

This is how `make run` runs them on one machine; in production each runs on its own (docker-compose.yml).
"""

from service_runtime.settings import CONTROL_PLANE_SERVICES
from services.runner import run

if __name__ == "__main__":
    run(list(CONTROL_PLANE_SERVICES), name="control_plane")
