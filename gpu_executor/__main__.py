"""`python -m gpu_executor serve`: the GPU executor's gRPC server (COMFYMESH_EXECUTOR_PORT);
`python -m gpu_executor run-graph GRAPH.json --output-dir DIR`: run a graph locally (see run_graph.py).

Execute runs graphs in a supervised worker process (or, with COMFYMESH_EXECUTOR_ENGINE=comfyui, on a ComfyUI
server the executor starts and supervises or attaches to: gpu_executor/comfyui/) and streams their events; Describe
serves the device, the node catalog and the model cache tiers; PrefetchModels loads models ahead of time. The
executor registers with the execution service and heartbeats (COMFYMESH_EXECUTOR_REGISTER), and drains on SIGTERM
(see app.py).

The server process imports no torch: the worker process builds the engine and holds the models, so the server
answers within a second or two of its start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from service_runtime.settings import Settings, get_settings
from service_runtime.telemetry.logs import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gpu_executor")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="serve GpuExecutorService")
    serve_parser.add_argument("--port", type=int, default=None, help="gRPC port (default COMFYMESH_EXECUTOR_PORT)")
    run_graph = sub.add_parser("run-graph", help="run a graph file locally, without the platform")
    from gpu_executor.run_graph import add_arguments

    add_arguments(run_graph)
    args = parser.parse_args()
    if args.command == "run-graph":
        from gpu_executor.run_graph import run

        sys.exit(run(args))
    settings = get_settings()
    configure_logging("executor", settings.log_level, settings.log_format, settings.service_instance)
    port = settings.executor_port if args.port is None else args.port
    sys.exit(asyncio.run(serve(settings, port)))


async def serve(settings: Settings, port: int) -> int:
    """Serves until SIGTERM/SIGINT, drains, and returns the exit status."""
    from gpu_executor.app import ExecutorApp

    try:
        app = ExecutorApp(settings, port)
    except (OSError, ValueError) as exc:  # a bad label, an unreadable warm-up graph: fail before serving
        logging.getLogger("gpu_executor").error("cannot start the executor: %s", exc)
        return 2
    return await app.run()


if __name__ == "__main__":
    main()
