"""`python -m gpu_executor serve`: the GPU executor's gRPC server (COMFYMESH_EXECUTOR_PORT);
`python -m gpu_executor run-graph GRAPH.json --output-dir DIR`: run a graph locally (see run_graph.py).

Execute runs graphs in a supervised worker process and streams their events; Describe serves the device and the
node catalog. PrefetchModels and fleet registration come later and answer UNIMPLEMENTED (NOT_IMPLEMENTED).
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
from gpu_executor.execution import ExecutionRunner
from gpu_executor.run_graph import add_arguments, run
from gpu_executor.transport import ExecutorServicer
from gpu_executor.worker.child import WorkerConfig
from gpu_executor.worker.supervisor import WorkerSupervisor
from service_runtime.grpc import GrpcServer, ServiceBinding, serve_until_signalled
from service_runtime.object_store import ObjectStore
from service_runtime.settings import Settings, get_settings
from service_runtime.telemetry.logs import configure_logging

log = logging.getLogger(__name__)
SERVICE_NAME = executor_service_pb2.DESCRIPTOR.services_by_name["GpuExecutorService"].full_name


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gpu_executor")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="serve GpuExecutorService")
    serve_parser.add_argument("--port", type=int, default=None, help="gRPC port (default COMFYMESH_EXECUTOR_PORT)")
    run_graph = sub.add_parser("run-graph", help="run a graph file locally, without the platform")
    add_arguments(run_graph)
    args = parser.parse_args()
    if args.command == "run-graph":
        sys.exit(run(args))
    settings = get_settings()
    configure_logging("executor", settings.log_level, settings.log_format, settings.service_instance)
    port = settings.executor_port if args.port is None else args.port
    asyncio.run(serve(settings, port))


async def serve(settings: Settings, port: int) -> None:
    """The catalog is read here (cheap: diffusion libraries load lazily); models live in the worker process."""
    runtime.bind_models_root(settings.models_dir)
    configure_tokenizer_dir(settings.tokenizer_dir)
    registry = build_registry(settings.custom_node_paths)
    for problem in registry.errors:
        log.warning("custom nodes %s skipped: %s", problem.pack, problem.error,
                    extra={"node_class": problem.node_class})
    supervisor = WorkerSupervisor(WorkerConfig(tuple(settings.custom_node_paths), settings.models_dir,
                                               settings.tokenizer_dir),
                                  interrupt_grace=settings.interrupt_grace_seconds)
    await supervisor.start()
    store = ObjectStore.from_settings(settings) if settings.s3_endpoint else None
    runner = ExecutionRunner(settings, supervisor, store)
    executor_id = settings.executor_advertise_addr or f"{socket.gethostname()}:{port}"
    # PrefetchModels is inherited from the generated base: UNIMPLEMENTED for now.
    servicer = ExecutorServicer(executor_id, registry, runner)  # type: ignore[abstract]
    binding = ServiceBinding(SERVICE_NAME, servicer, executor_service_pb2_grpc.add_GpuExecutorServiceServicer_to_server)
    server = GrpcServer(settings, "executor", [binding], port)
    server.on_stop.append(supervisor.stop)
    await serve_until_signalled(server)


if __name__ == "__main__":
    main()
