"""`python -m gpu_executor serve`: the GPU executor's gRPC server (COMFYMESH_EXECUTOR_PORT);
`python -m gpu_executor run-graph GRAPH.json --output-dir DIR`: run a graph locally (see run_graph.py).

Describe serves the device and the engine's node catalog; Execute, the supervised worker, the cache tiers and fleet
registration come with the executor-service issue and answer UNIMPLEMENTED (NOT_IMPLEMENTED) until then.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from gpu_executor.diffusion.text.conditioning import configure_tokenizer_dir
from gpu_executor.engine import runtime
from gpu_executor.engine.registry import build_registry
from gpu_executor.run_graph import add_arguments, run
from gpu_executor.transport import ExecutorServicer
from service_runtime.grpc import GrpcServer, ServiceBinding, serve_until_signalled
from service_runtime.settings import get_settings
from service_runtime.telemetry.logs import configure_logging

log = logging.getLogger(__name__)
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
    port = settings.executor_port if args.port is None else args.port
    runtime.bind_models_root(settings.models_dir)
    configure_tokenizer_dir(settings.tokenizer_dir)
    registry = build_registry(settings.custom_node_paths)
    for problem in registry.errors:
        log.warning("custom nodes %s skipped: %s", problem.pack, problem.error,
                    extra={"node_class": problem.node_class})
    executor_id = settings.executor_advertise_addr or f"{socket.gethostname()}:{port}"
    # Execute, Interrupt and PrefetchModels are inherited from the generated base: UNIMPLEMENTED for now.
    servicer = ExecutorServicer(executor_id, registry)  # type: ignore[abstract]
    binding = ServiceBinding(SERVICE_NAME, servicer, executor_service_pb2_grpc.add_GpuExecutorServiceServicer_to_server)
    asyncio.run(serve_until_signalled(GrpcServer(settings, "executor", [binding], port)))


if __name__ == "__main__":
    main()
