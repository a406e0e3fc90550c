"""Every service runs as its own process: health, reflection, metrics, exclusive ports, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_runtime.db import migrate
from service_runtime.healthcheck import check
from service_runtime.processes import ManagedProcess, ValkeyServer, free_port, grpcurl_binary

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

COMMANDS = {
    "workflow": (["-m", "services.workflow"], "WORKFLOW_PORT", "comfymesh.workflow.v1.WorkflowService"),
    "queue": (["-m", "services.queue"], "QUEUE_PORT", "comfymesh.queue.v1.QueueService"),
    "execution": (["-m", "services.execution"], "EXECUTION_PORT", "comfymesh.execution.v1.ExecutionService"),
    "model": (["-m", "services.model"], "MODEL_PORT", "comfymesh.model.v1.ModelService"),
    "auth": (["-m", "services.auth"], "AUTH_PORT", "comfymesh.auth.v1.AuthService"),
    "webhook": (["-m", "services.webhook"], "WEBHOOK_PORT", "comfymesh.webhook.v1.WebhookService"),
    "executor": (["-m", "gpu_executor", "serve"], "EXECUTOR_PORT", "comfymesh.executor.v1.GpuExecutorService"),
}


def _start(tmp_path: Path, name: str, port: int, metrics_port: int, log: str, redis_url: str) -> ManagedProcess:
    args, port_var, _ = COMMANDS[name]
    # Each test has a Redis server of its own: a lone execution service runs a dispatcher, which must not take part
    # in another platform's queue.
    env = {**os.environ, "COMFYMESH_HOME": str(tmp_path), f"COMFYMESH_{port_var}": str(port),
           "COMFYMESH_METRICS_PORT": str(metrics_port), "COMFYMESH_SHUTDOWN_GRACE_SECONDS": "2",
           "COMFYMESH_REDIS_URL": redis_url, "COMFYMESH_EXECUTOR_REGISTER": "false"}
    process = ManagedProcess([sys.executable, *args], log_path=tmp_path / log, env=env, cwd=ROOT, name=name)
    return process.start()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_process_serves_health_reflection_and_metrics(tmp_path: Path, name: str, redis_server: ValkeyServer) -> None:
    migrate.upgrade(f"sqlite+aiosqlite:///{tmp_path / 'comfymesh.db'}")
    port, metrics_port = free_port(), free_port()
    process = _start(tmp_path, name, port, metrics_port, f"{name}.log", redis_server.url)
    service = COMMANDS[name][2]
    try:
        process.wait_ready(lambda: check(f"127.0.0.1:{port}", service, timeout=1.0), 30)
        listed = subprocess.run([str(grpcurl_binary()), "-plaintext", f"127.0.0.1:{port}", "list"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.split()
        assert service in listed and "grpc.health.v1.Health" in listed
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5, trust_env=False).text
        assert 'api_requests_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health"}' \
            in metrics
        assert "api_request_duration_seconds_bucket" in metrics

        # so_reuseport is off: a second process on the same port fails instead of silently sharing it.
        second = _start(tmp_path, name, port, free_port(), f"{name}-2.log", redis_server.url)
        assert second.wait(timeout=30) != 0
        assert "bind" in (tmp_path / f"{name}-2.log").read_text().lower()
    finally:
        # A clean SIGTERM drain exits 0 well within the grace period.
        assert process.stop(grace=20) == 0, process.log_tail()


def test_sigterm_drains_in_flight_streams(tmp_path: Path, redis_server: ValkeyServer) -> None:
    """Health turns NOT_SERVING at once on SIGTERM while a Watch stays open; the process then exits cleanly."""
    port = free_port()
    process = _start(tmp_path, "workflow", port, 0, "drain.log", redis_server.url)
    try:
        process.wait_ready(lambda: check(f"127.0.0.1:{port}", timeout=1.0), 30)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(timeout=20) == 0
    finally:
        process.stop(grace=1)
