"""The `grpc.aio` server factory: one way to build, run and drain a ComfyMesh gRPC process.

Every server gets the standard interceptor chain, `grpc.health.v1` (per service and overall), reflection,
explicit keepalive (matching `channels.py`), `so_reuseport` off so a second process cannot silently share the
port, a Prometheus endpoint, and a graceful drain on SIGTERM/SIGINT: health flips to NOT_SERVING first (Envoy and
Kubernetes stop sending), then in-flight RPCs get `shutdown_grace_seconds` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_runtime.grpc.interceptors import default_interceptors
from service_runtime.settings import Settings
from service_runtime.telemetry import tracing
from service_runtime.telemetry.metrics import MetricsEndpoint, rpc_metrics

log = logging.getLogger(__name__)
# How long past its grace a gRPC server stop may take before the drain gives up on it and runs the cleanup hooks.
STOP_OVERRUN_SECONDS = 10.0


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to serve: its full proto name, its servicer, and the generated `add_*_to_server`."""

    name: str
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]


def server_options(settings: Settings) -> list[tuple[str, int]]:
    keepalive_ms = settings.grpc_keepalive_seconds * 1000
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", 1024),
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Accept client pings every 10 s; the default (5 min) GOAWAYs clients that ping more often.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
    ]


@dataclass
class GrpcServer:
    """A started-or-not gRPC server with health, reflection and metrics."""

    settings: Settings
    component: str
    bindings: Sequence[ServiceBinding]
    port: int
    host: str = ""
    reflection_extra: Sequence[str] = ()
    metrics_port: int | None = None
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The authenticating interceptor (service_runtime.auth.interceptor.auth_interceptor); None: every RPC is open.
    auth: grpc.aio.ServerInterceptor | None = None
    _server: grpc.aio.Server | None = None
    _health: health.aio.HealthServicer | None = None
    _metrics: MetricsEndpoint | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def bound_port(self) -> int:
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        tracing_on = tracing.configure_tracing(self.component, self.settings.otel_endpoint)
        self._server = grpc.aio.server(
            interceptors=default_interceptors(rpc_metrics(), tracing.server_interceptors(tracing_on),
                                             [self.auth] if self.auth is not None else None),
            options=server_options(self.settings),
            maximum_concurrent_rpcs=self.settings.grpc_max_concurrent_rpcs,
        )
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = sorted({*(b.name for b in self.bindings), *self.reflection_extra})
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server)
        host = self.host or self.settings.bind_host
        # add_insecure_port raises when the port is taken (so_reuseport=0); port 0 picks a free one.
        self.port = self._server.add_insecure_port(f"{host}:{self.port}")
        await self._server.start()
        metrics_port = self.settings.metrics_port_for(self.port) if self.metrics_port is None else self.metrics_port
        self._metrics = MetricsEndpoint(host, metrics_port)
        self._metrics.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        for binding in self.bindings:
            await self._health.set(binding.name, health_pb2.HealthCheckResponse.SERVING)
        for hook in self.on_start:  # background loops (dispatchers, janitors) start once the port answers
            await hook()
        log.info("serving %s", ", ".join(b.name for b in self.bindings) or "(health only)",
                 extra={"port": self.port, "metrics_port": self._metrics.port})

    @property
    def metrics_endpoint_port(self) -> int:
        return self._metrics.port if self._metrics else 0

    async def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING first, then up to `grace` seconds for in-flight RPCs, then cleanup hooks."""
        if self._server is None or self._stopped.is_set():
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        try:
            # gRPC cancels what is still running when the grace ends; a shutdown that still does not complete (a
            # call core never reports finished) must not keep the process, or its cleanup hooks, from stopping.
            async with asyncio.timeout(grace + STOP_OVERRUN_SECONDS):
                await self._server.stop(grace)
        except TimeoutError:
            log.error("the gRPC server had not stopped %.0fs after its %.1fs grace; cleaning up anyway",
                      STOP_OVERRUN_SECONDS, grace, extra={"port": self.port})
        for hook in reversed(self.on_stop):
            try:
                await hook()
            except Exception:
                log.exception("cleanup hook failed")
        if self._metrics is not None:
            self._metrics.stop()
        self._stopped.set()
        log.info("stopped", extra={"port": self.port})

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve_until_signalled(server: GrpcServer) -> None:
    """Starts the server and drains it on SIGTERM or SIGINT; returns once it has stopped."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await server.start()
    await stop_requested.wait()
    log.info("signal received; draining")
    await server.stop()
