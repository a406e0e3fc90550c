"""The interceptor chain on a real in-process grpc.aio server: typed statuses, opaque internals, ids, metrics."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from comfymesh.common.v1 import execution_event_pb2
from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from service_runtime.errors import Reason, not_found
from service_runtime.grpc import GrpcServer, ServiceBinding
from service_runtime.grpc.contract import contract_only
from service_runtime.settings import Settings
from service_runtime.telemetry.logs import JsonFormatter

pytestmark = pytest.mark.unit


class Queue(queue_service_pb2_grpc.QueueServiceServicer):
    async def GetJob(self, request: Any, context: Any) -> queue_service_pb2.Job:
        if request.job_id == "crash":
            raise RuntimeError("secret internals: password=hunter2")
        raise not_found(f"job {request.job_id} not found", job_id=request.job_id)


class Workflow(workflow_service_pb2_grpc.WorkflowServiceServicer):
    async def WatchExecution(self, request: Any, context: Any) -> AsyncIterator[execution_event_pb2.ExecutionEvent]:
        for index in range(2):
            yield execution_event_pb2.ExecutionEvent(event_id=str(index))
        if request.id == "typed":
            raise not_found("gone", Reason.EXECUTION_NOT_FOUND)
        raise RuntimeError("boom")


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    settings = Settings(metrics_port=0, shutdown_grace_seconds=0.5)
    bindings = [
        ServiceBinding("comfymesh.queue.v1.QueueService", contract_only(Queue),
                       queue_service_pb2_grpc.add_QueueServiceServicer_to_server),
        ServiceBinding("comfymesh.workflow.v1.WorkflowService", contract_only(Workflow),
                       workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server),
    ]
    server = GrpcServer(settings, "test", bindings, port=0, host="127.0.0.1")
    await server.start()
    yield server
    await server.stop(0.1)


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def test_domain_error_becomes_typed_status(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await queue_service_pb2_grpc.QueueServiceStub(channel).GetJob(queue_service_pb2.GetJobRequest(job_id="j"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = _error_info(caught.value)
    assert (info.reason, dict(info.metadata)) == ("RESOURCE_NOT_FOUND", {"job_id": "j"})


async def test_unexpected_error_is_opaque_internal_with_request_id(server: GrpcServer) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test", "here"))
    logging.getLogger().addHandler(handler)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await queue_service_pb2_grpc.QueueServiceStub(channel).GetJob(
                    queue_service_pb2.GetJobRequest(job_id="crash"), metadata=[("x-request-id", "req-123")])
        # The access line is written once the handler has returned, which may be just after the client got the
        # status: keep listening for it, boundedly.
        async with asyncio.timeout(10):
            while "rpc /comfymesh.queue.v1.QueueService/GetJob" not in stream.getvalue():
                await asyncio.sleep(0.01)
    finally:
        logging.getLogger().removeHandler(handler)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (caught.value.details() or "")
    info = _error_info(caught.value)
    assert (info.reason, info.metadata["request_id"]) == ("INTERNAL_ERROR", "req-123")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    logged = [line for line in lines if line.get("traceback")]
    assert logged and logged[0]["request_id"] == "req-123" and "hunter2" in logged[0]["traceback"]
    access = [line for line in lines if line["message"].startswith("rpc /comfymesh.queue.v1.QueueService/GetJob")]
    assert access[-1]["grpc_code"] == "INTERNAL" and access[-1]["reason"] == "INTERNAL_ERROR"


async def test_unimplemented_rpc_has_a_reason(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await queue_service_pb2_grpc.QueueServiceStub(channel).GetQueueStats(
                queue_service_pb2.GetQueueStatsRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _error_info(caught.value).reason == "NOT_IMPLEMENTED"


@pytest.mark.parametrize(("execution_id", "code", "reason"), [
    ("typed", grpc.StatusCode.NOT_FOUND, "EXECUTION_NOT_FOUND"),
    ("crash", grpc.StatusCode.INTERNAL, "INTERNAL_ERROR"),
])
async def test_stream_failure_after_messages(server: GrpcServer, execution_id: str, code: grpc.StatusCode,
                                             reason: str) -> None:
    received: list[str] = []

    async def consume(call: grpc.aio.UnaryStreamCall) -> None:
        async for event in call:
            received.append(event.event_id)

    async with grpc.aio.insecure_channel(server.address) as channel:
        call = workflow_service_pb2_grpc.WorkflowServiceStub(channel).WatchExecution(
            workflow_service_pb2.WatchExecutionRequest(id=execution_id))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await consume(call)
    assert received == ["0", "1"]
    assert caught.value.code() == code
    assert _error_info(caught.value).reason == reason


async def test_metrics_count_requests_and_errors_by_reason(server: GrpcServer) -> None:
    labels = {"grpc_service": "comfymesh.queue.v1.QueueService", "grpc_method": "GetJob", "grpc_code": "NOT_FOUND"}
    before = REGISTRY.get_sample_value("api_requests_total", labels) or 0.0
    errors_before = REGISTRY.get_sample_value("api_errors_total", {**labels, "reason": "RESOURCE_NOT_FOUND"}) or 0.0
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await queue_service_pb2_grpc.QueueServiceStub(channel).GetJob(queue_service_pb2.GetJobRequest(job_id="x"))
    # The server counts the RPC once its handler has returned, which may be just after the client got the status
    # (an aborted call sends it first): wait for the count, boundedly.
    async with asyncio.timeout(10):
        while REGISTRY.get_sample_value("api_requests_total", labels) != before + 1:
            await asyncio.sleep(0.01)
    assert REGISTRY.get_sample_value("api_errors_total", {**labels, "reason": "RESOURCE_NOT_FOUND"}) == \
        errors_before + 1
    assert (REGISTRY.get_sample_value("api_request_duration_seconds_count", labels) or 0) >= 1
