"""`python -m gpu_executor serve`: the GPU executor's gRPC server (COMFYMESH_EXECUTOR_PORT);
`python -m gpu_executor run-graph GRAPH.json --output-dir DIR`: run a graph locally (see run_graph.py).

The engine, the supervised worker, the cache tiers and fleet registration come with the executor issues; until then
the process serves health, reflection and metrics, and GpuExecutorService answers UNIMPLEMENTED (NOT_IMPLEMENTED).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from gpu_executor.run_graph import add_arguments, run
from service_runtime.grpc import GrpcServer, ServiceBinding, serve_until_signalled
from service_runtime.grpc.contract import contract_only
from service_runtime.settings import get_settings
from service_runtime.telemetry.logs import configure_logging

SERVICE_NAME = executor_service_pb2.DESCRIPTOR.services_by_name["GpuExecutorService"].full_name


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gpu_executor")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve GpuExecutorService")
    serve.add_argument("--port", type=int, default=None, help="gRPC port (default COMFYMESH_EXECUTOR_PORT)")
    run_graph = sub.add_parser("run-graph", help="run a graph file locally, without the platform")
    add_arguments(run_graph)
    args = parser.parse_args()
    if args.command == "run-graph":
        sys.exit(run(args))
    settings = get_settings()
    configure_logging("executor", settings.log_level, settings.log_format, settings.service_instance)
    binding = ServiceBinding(SERVICE_NAME, contract_only(executor_service_pb2_grpc.GpuExecutorServiceServicer),
                             executor_service_pb2_grpc.add_GpuExecutorServiceServicer_to_server)
    port = settings.executor_port if args.port is None else args.port
    asyncio.run(serve_until_signalled(GrpcServer(settings, "executor", [binding], port)))


if __name__ == "__main__":
    main()
