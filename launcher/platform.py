"""The whole platform on one machine as real processes: what `make run` starts and what e2e tests start.

Backing systems are started only when not configured: a Valkey server (unless COMFYMESH_REDIS_URL is set),
SeaweedFS (unless COMFYMESH_S3_ENDPOINT is set); the database is SQLite under COMFYMESH_HOME unless
COMFYMESH_DATABASE_URL is set. Then migrations, the control plane (all services in one process), one CPU executor,
and Envoy. Every process is stopped in reverse order on `stop()`, leaving nothing behind.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.config import GatewayConfig
from gateway.render import render_envoy_config
from service_runtime.db import migrate
from service_runtime.healthcheck import check as grpc_health_check
from service_runtime.processes import EnvoyProcess, ManagedProcess, SeaweedFSServer, ValkeyServer, free_port
from service_runtime.processes.envoy import validate_envoy_config
from service_runtime.settings import Settings

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = 60.0


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


@dataclass
class LocalPlatform:
    """Starts and stops the platform. `settings` decide ports and which backing systems are external."""

    settings: Settings
    # 0 = pick a free port (tests); otherwise from settings.
    free_ports: bool = False
    endpoints: Endpoints = field(default_factory=Endpoints)
    _started: list[object] = field(default_factory=list)

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
        self.settings = settings
        migrate.upgrade(settings.resolved_database_url)

        env = self._child_env(settings)
        # Each process gets its own metrics port: free ones (tests), none when disabled (COMFYMESH_METRICS_PORT=0),
        # else the default gRPC port + 1000.
        if self.free_ports:
            cp_metrics, ex_metrics = free_port(), free_port()
        elif settings.metrics_port == 0:
            cp_metrics = ex_metrics = 0
        else:
            cp_metrics = settings.metrics_port_for(settings.control_plane_port)
            ex_metrics = settings.metrics_port_for(settings.executor_port)
        control_plane = self._python_process(
            ["-m", "services.control_plane"], logs / "control_plane.log", "control_plane",
            {**env, "COMFYMESH_REFLECT_ALL_PUBLIC_SERVICES": "true", "COMFYMESH_METRICS_PORT": str(cp_metrics)})
        executor = self._python_process(
            ["-m", "gpu_executor", "serve"], logs / "executor.log", "executor",
            {**env, "COMFYMESH_METRICS_PORT": str(ex_metrics)})
        cp_address = f"127.0.0.1:{settings.control_plane_port}"
        ex_address = f"127.0.0.1:{settings.executor_port}"
        control_plane.wait_ready(lambda: grpc_health_check(cp_address, timeout=1.0), STARTUP_TIMEOUT)
        executor.wait_ready(lambda: grpc_health_check(ex_address, timeout=1.0), STARTUP_TIMEOUT)

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
        )

    def _python_process(self, args: list[str], log_path: Path, name: str, env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess([sys.executable, *args], log_path=log_path, name=name, env=env,
                                 cwd=Path(__file__).resolve().parent.parent)
        self._started.append(process)
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
