"""OpenTelemetry tracing: off unless COMFYMESH_OTEL_ENDPOINT is set; then spans go to that OTLP/gRPC collector."""

from __future__ import annotations

import logging

import grpc.aio

log = logging.getLogger(__name__)
_configured = False


def configure_tracing(service: str, endpoint: str) -> bool:
    """Installs the global tracer provider once; returns whether tracing is on."""
    global _configured
    if not endpoint:
        return False
    if _configured:
        return True
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"comfymesh-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    _configured = True
    log.info("tracing enabled", extra={"otel_endpoint": endpoint})
    return True


def server_interceptors(enabled: bool) -> list[grpc.aio.ServerInterceptor]:
    """The OpenTelemetry server interceptor (outermost in the chain) when tracing is on."""
    if not enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def client_interceptors(enabled: bool) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that propagate the trace context to the called service."""
    if not enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]
