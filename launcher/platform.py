"""The whole platform on one machine as real processes: what `make run` starts and what e2e tests start.

Backing systems are started only when not configured: a Valkey server (unless COMFYMESH_REDIS_URL is set),
SeaweedFS (unless COMFYMESH_S3_ENDPOINT is set); the database is SQLite under COMFYMESH_HOME unless
COMFYMESH_DATABASE_URL is set. Then migrations, the control plane (all services in one process), one CPU executor,
and Envoy. Every process is stopped in reverse order on `stop()`, leaving nothing behind.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from gateway.config import GatewayConfig
from gateway.render import render_envoy_config
from service_runtime.auth.credentials import internal_credential
from service_runtime.db import migrate
from service_runtime.healthcheck import check as grpc_health_check
from service_runtime.processes import EnvoyProcess, ManagedProcess, SeaweedFSServer, ValkeyServer, free_port
from service_runtime.processes.envoy import validate_envoy_config
from service_runtime.secrets import deployment_secret
from service_runtime.settings import Settings
from services.auth.bootstrap import admin_key_path, ensure_admin_key

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = 60.0


def internal_metadata(settings: Settings) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata with the platform's internal credential (none while authentication is off)."""
    return (("authorization", f"Bearer {internal_credential(settings)}"),) if settings.auth_enabled else ()


def fleet_size(address: str, settings: Settings | None = None) -> int:
    """How many executors the control plane at `address` has registered (0 when it does not answer)."""
    try:
        with grpc.insecure_channel(address) as channel:
            stub = execution_service_pb2_grpc.ExecutionServiceStub(channel)
            reply = stub.GetFleetCatalog(execution_service_pb2.GetFleetCatalogRequest(), timeout=2,
                                         metadata=internal_metadata(settings) if settings is not None else None)
    except grpc.RpcError:
        return 0
    return int(reply.executor_count)


@dataclass
class Endpoints:
    gateway: str = ""
    gateway_admin: str = ""
    control_plane: str = ""
    executor: str = ""
    redis_url: str = ""
    s3_endpoint: str = ""
    database_url: str = ""
    control_plane_metrics: str = ""
    executor_metrics: str = ""
    # Every executor's gRPC address (the first is `executor`).
    executors: list[str] = field(default_factory=list)
    # The bootstrap admin API key ("" when authentication is off) and the file it is kept in.
    admin_key: str = ""
    admin_key_path: str = ""


@dataclass
class LocalPlatform:
    """Starts and stops the platform. `settings` decide ports and which backing systems are external."""

    settings: Settings
    # 0 = pick a free port (tests); otherwise from settings.
    free_ports: bool = False
    # CPU executors to start (each registers with the fleet under its own id and port).
    executors: int = 1
    # Extra COMFYMESH_* values for every child process (tests: short leases, timeouts), without the prefix.
    extra_env: dict[str, str] = field(default_factory=dict)
    endpoints: Endpoints = field(default_factory=Endpoints)
    # The service processes by name ("control_plane", "executor-1", ...), for tests that kill or restart them.
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    _started: list[object] = field(default_factory=list)
    _env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.settings.home.resolve()

    def _port(self, configured: int) -> int:
        return free_port() if self.free_ports else configured

    def _child_env(self, settings: Settings) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYMESH_")}
        values = {
            "HOME": str(self.home), "DATABASE_URL": settings.resolved_database_url, "REDIS_URL": settings.redis_url,
            "S3_ENDPOINT": settings.s3_endpoint, "S3_ACCESS_KEY": settings.s3_access_key,
            "S3_SECRET_KEY": settings.s3_secret_key, "S3_SECURE": str(settings.s3_secure).lower(),
            "CONTROL_PLANE_PORT": str(settings.control_plane_port), "EXECUTOR_PORT": str(settings.executor_port),
            "LOG_FORMAT": settings.log_format, "LOG_LEVEL": settings.log_level, "BIND_HOST": "127.0.0.1",
            "SECRET_KEY": settings.secret_key, "OTEL_ENDPOINT": settings.otel_endpoint,
            "ENVIRONMENT": settings.environment,
            "MODELS_DIR": str(self.models_dir(settings)),
        }
        if settings.tokenizer_dir is not None:
            values["TOKENIZER_DIR"] = str(settings.tokenizer_dir)
        # In one process every component is reached at the control plane's address.
        for component in ("workflow", "queue", "execution", "model", "auth", "webhook"):
            values[f"{component.upper()}_ADDR"] = f"127.0.0.1:{settings.control_plane_port}"
        values["EXECUTOR_ADDR"] = f"127.0.0.1:{settings.executor_port}"
        values.update(self.extra_env)
        env.update({f"COMFYMESH_{k}": v for k, v in values.items()})
        return env

    def models_dir(self, settings: Settings) -> Path:
        """COMFYMESH_MODELS_DIR, or COMFYMESH_HOME/models with ComfyUI's folders (put checkpoints/ files there)."""
        if settings.models_dir is not None:
            return settings.models_dir.resolve()
        root = self.home / "models"
        for folder in ("checkpoints", "loras", "vae", "controlnet", "clip", "text_encoders", "unet",
                       "diffusion_models", "embeddings", "upscale_models"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        return root

    def start(self) -> Endpoints:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    def _start(self) -> None:
        settings = self.settings
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if not settings.redis_url:
            valkey = ValkeyServer(None, self.home / "valkey", persistent=True, log_path=logs / "valkey.log")
            self._started.append(valkey)
            valkey.start(timeout=STARTUP_TIMEOUT)
            settings = settings.model_copy(update={"redis_url": valkey.url})
        if not settings.s3_endpoint:
            seaweed = SeaweedFSServer(self.home / "seaweedfs", settings.s3_access_key, settings.s3_secret_key,
                                      log_path=logs / "seaweedfs.log")
            self._started.append(seaweed)
            seaweed.start(timeout=STARTUP_TIMEOUT)
            settings = settings.model_copy(update={"s3_endpoint": seaweed.endpoint})
        settings = settings.model_copy(update={
            "control_plane_port": self._port(settings.control_plane_port),
            "executor_port": self._port(settings.executor_port),
            "gateway_port": self._port(settings.gateway_port),
            "gateway_admin_port": self._port(settings.gateway_admin_port),
        })
        # One deployment secret for every child process, so the internal credential verifies across them.
        settings = settings.model_copy(update={"secret_key": deployment_secret(settings).decode()})
        self.settings = settings
        migrate.upgrade(settings.resolved_database_url)
        admin_key, admin_key_file = self._admin_key(settings)

        env = self._child_env(settings)
        self._env = env
        # Each process gets its own metrics port: free ones (tests), none when disabled (COMFYMESH_METRICS_PORT=0),
        # else the default gRPC port + 1000.
        if self.free_ports:
            cp_metrics = free_port()
        elif settings.metrics_port == 0:
            cp_metrics = 0
        else:
            cp_metrics = settings.metrics_port_for(settings.control_plane_port)
        cp_address = f"127.0.0.1:{settings.control_plane_port}"
        control_plane = self._control_plane_process(cp_metrics)
        executors: list[tuple[ManagedProcess, str, int]] = []
        for index in range(1, self.executors + 1):
            port = settings.executor_port if index == 1 else free_port()
            metrics = free_port() if self.free_ports else (
                0 if settings.metrics_port == 0 else settings.metrics_port_for(port))
            executors.append((self.start_executor(index, port, metrics), f"127.0.0.1:{port}", metrics))
        control_plane.wait_ready(lambda: grpc_health_check(cp_address, timeout=1.0), STARTUP_TIMEOUT)
        for process, address, _ in executors:
            process.wait_ready(functools.partial(grpc_health_check, address, timeout=1.0), STARTUP_TIMEOUT)
        # Ready means every executor registered with the fleet, so the first submission finds them.
        control_plane.wait_ready(lambda: fleet_size(cp_address, settings) >= self.executors, STARTUP_TIMEOUT)
        ex_address, ex_metrics = executors[0][1], executors[0][2]

        gateway_config = GatewayConfig.from_settings(settings, upstream_override=cp_address)
        config_path = self.home / "envoy.yaml"
        config_path.write_text(render_envoy_config(gateway_config))
        validate_envoy_config(config_path)
        envoy = EnvoyProcess(config_path, settings.gateway_admin_port, logs / "envoy.log", log_level="warning")
        self._started.append(envoy)
        envoy.start(timeout=STARTUP_TIMEOUT)
        gateway = f"127.0.0.1:{settings.gateway_port}"
        # Ready means Envoy's active health checks have seen the control plane SERVING.
        assert envoy.process is not None
        envoy.process.wait_ready(lambda: httpx.get(f"http://{gateway}/healthz", timeout=1.0,
                                                   trust_env=False).status_code == 200, STARTUP_TIMEOUT)
        self.endpoints = Endpoints(
            gateway=gateway, gateway_admin=f"127.0.0.1:{settings.gateway_admin_port}", control_plane=cp_address,
            executor=ex_address, redis_url=settings.redis_url, s3_endpoint=settings.s3_endpoint,
            database_url=settings.resolved_database_url,
            control_plane_metrics=f"127.0.0.1:{cp_metrics}" if cp_metrics else "(disabled)",
            executor_metrics=f"127.0.0.1:{ex_metrics}" if ex_metrics else "(disabled)",
            executors=[address for _, address, _ in executors],
            admin_key=admin_key, admin_key_path=admin_key_file,
        )

    @staticmethod
    def _admin_key(settings: Settings) -> tuple[str, str]:
        """The admin API key: created (and written to COMFYMESH_HOME/admin.key, 0600) on first start, read from
        that file on later ones; ("", "") while authentication or the bootstrap is off."""
        if not (settings.auth_enabled and settings.auth_bootstrap_admin):
            return "", ""
        path = admin_key_path(settings).resolve()
        key = ensure_admin_key(settings)
        if key is None and path.exists():
            key = path.read_text().strip()
        return key or "", str(path)

    def child_env(self) -> dict[str, str]:
        """The environment the platform gives its service processes (tests start extra replicas with it)."""
        return dict(self._env)

    def _control_plane_process(self, metrics_port: int) -> ManagedProcess:
        return self._python_process(
            ["-m", "services.control_plane"], self.home / "logs" / "control_plane.log", "control_plane",
            {**self._env, "COMFYMESH_REFLECT_ALL_PUBLIC_SERVICES": "true", "COMFYMESH_METRICS_PORT": str(metrics_port)})

    def start_executor(self, index: int, port: int, metrics_port: int,
                       extra_env: dict[str, str] | None = None) -> ManagedProcess:
        """Starts executor `index` on `port` (it registers itself as "executor-<index>"); `extra_env` adds or
        overrides COMFYMESH_* settings of this executor only (e.g. COMFYMESH_EXECUTOR_ENGINE)."""
        return self._python_process(
            ["-m", "gpu_executor", "serve"], self.home / "logs" / f"executor-{index}.log", f"executor-{index}",
            {**self._env, "COMFYMESH_METRICS_PORT": str(metrics_port), "COMFYMESH_EXECUTOR_PORT": str(port),
             "COMFYMESH_EXECUTOR_ID": f"executor-{index}", "COMFYMESH_EXECUTOR_ADVERTISE_ADDR": f"127.0.0.1:{port}",
             **(extra_env or {})})

    def restart_control_plane(self) -> None:
        """Starts the control plane again (after a test killed it), on the same port, and waits until it serves."""
        old = self.processes.get("control_plane")
        if old is not None and old in self._started:
            self._started.remove(old)
        address = self.endpoints.control_plane
        metrics = free_port() if self.free_ports else 0
        process = self._control_plane_process(metrics)
        process.wait_ready(lambda: grpc_health_check(address, timeout=1.0), STARTUP_TIMEOUT)

    def _python_process(self, args: list[str], log_path: Path, name: str, env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess([sys.executable, *args], log_path=log_path, name=name, env=env,
                                 cwd=Path(__file__).resolve().parent.parent)
        self._started.append(process)
        self.processes[name] = process
        process.start()
        return process

    def stop(self) -> None:
        """Stops everything started, newest first; safe to call twice."""
        while self._started:
            component = self._started.pop()
            try:
                component.stop()  # type: ignore[attr-defined]
            except Exception:
                log.exception("failed to stop %r", component)
