"""Tracing: off by default; when on, every RPC becomes a span named after its gRPC method."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from service_runtime.errors import not_found
from service_runtime.grpc.interceptors import default_interceptors
from service_runtime.telemetry import tracing
from service_runtime.telemetry.metrics import rpc_metrics

pytestmark = pytest.mark.unit


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing.configure_tracing("x", "") is False
    assert tracing.server_interceptors(False) == []


class Queue(queue_service_pb2_grpc.QueueServiceServicer):
    async def GetJob(self, request: Any, context: Any) -> queue_service_pb2.Job:
        raise not_found("nope")


async def test_rpcs_become_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    server = grpc.aio.server(interceptors=default_interceptors(rpc_metrics(), tracing.server_interceptors(True)))
    queue_service_pb2_grpc.add_QueueServiceServicer_to_server(Queue(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await queue_service_pb2_grpc.QueueServiceStub(channel).GetJob(queue_service_pb2.GetJobRequest())
    finally:
        await server.stop(0)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["/comfymesh.queue.v1.QueueService/GetJob"]
    # NOT_FOUND is the caller's problem: OpenTelemetry's semantic conventions leave server spans UNSET for it and
    # record the code as an attribute.
    assert spans[0].attributes is not None and spans[0].attributes["rpc.grpc.status_code"] == 5
