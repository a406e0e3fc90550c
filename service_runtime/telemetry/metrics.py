"""Prometheus metrics for the RPC layer (seeds §7.2 names), served on a per-process HTTP `/metrics` port."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

# Buckets from 1 ms to 60 s: unary RPCs live at the low end, executions and streams at the high end.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class RpcMetrics:
    """The API metrics every service exports, labelled by gRPC service, method and status code."""

    request_duration: Histogram
    requests: Counter
    errors: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = DEFAULT_REGISTRY) -> RpcMetrics:
        labels = ("grpc_service", "grpc_method", "grpc_code")
        return cls(
            request_duration=Histogram("api_request_duration_seconds", "Time to handle an RPC (streams: until the "
                                       "stream ends).", labels, registry=registry, buckets=_LATENCY_BUCKETS),
            requests=Counter("api_requests_total", "RPCs handled.", labels, registry=registry),
            errors=Counter("api_errors_total", "RPCs that ended with a non-OK status.", (*labels, "reason"),
                           registry=registry),
        )

    def observe(self, method: str, code: str, seconds: float, reason: str = "") -> None:
        service, _, name = method.lstrip("/").partition("/")
        self.request_duration.labels(service, name, code).observe(seconds)
        self.requests.labels(service, name, code).inc()
        if code != "OK":
            self.errors.labels(service, name, code, reason).inc()


_rpc_metrics: RpcMetrics | None = None
_metrics_lock = threading.Lock()


def rpc_metrics() -> RpcMetrics:
    """The process-wide RPC metrics (created once: Prometheus refuses duplicate registrations)."""
    global _rpc_metrics
    with _metrics_lock:
        if _rpc_metrics is None:
            _rpc_metrics = RpcMetrics.create()
        return _rpc_metrics


class MetricsEndpoint:
    """The `/metrics` HTTP server of one process; port 0 means disabled."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_port if self._server else 0

    def start(self) -> None:
        if self._port == 0 or self._server is not None:
            return
        self._server, self._thread = start_http_server(self._port, addr=self._host)
        log.info("metrics endpoint listening", extra={"metrics_port": self.port})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
