"""GpuExecutorService.Execute on a real executor process with real SeaweedFS: events in order, outputs in the object
store, one execution at a time, idempotent per attempt, interrupts, and a worker crash contained."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from comfymesh.common.v1 import execution_event_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from service_runtime.healthcheck import check
from service_runtime.processes import ManagedProcess, SeaweedFSServer, free_port
from service_runtime.transport.graph_codec import graph_to_proto
from tests.fixtures.auth import authed_channel, internal_bearer, secret_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

IMAGE_GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0x336699}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sub/out"}},
}
SLOW_GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 1536, "height": 1536, "batch_size": 8, "color": 0}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
}
CRASHING_PACK = '''
import os

class Crash:
    RETURN_TYPES = ()
    FUNCTION = "go"
    OUTPUT_NODE = True
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"code": ("INT", {"default": 3})}}
    def go(self, code):
        os._exit(code)   # what a segfaulting extension or the OOM killer looks like from outside

class Stubborn:
    RETURN_TYPES = ()
    FUNCTION = "go"
    OUTPUT_NODE = True
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("INT", {"default": 120})}}
    def go(self, seconds):
        import time
        time.sleep(seconds)   # never checks for interruption
        return {}

NODE_CLASS_MAPPINGS = {"Crash": Crash, "Stubborn": Stubborn}
'''


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFSServer) -> Iterator[str]:
    home = tmp_path_factory.mktemp("executor")
    pack = home / "custom_nodes"
    pack.mkdir()
    (pack / "crash.py").write_text(CRASHING_PACK)
    port = free_port()
    env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_EXECUTOR_PORT": str(port),
           "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_S3_ENDPOINT": seaweedfs.endpoint,
           "COMFYMESH_S3_ACCESS_KEY": seaweedfs.access_key, "COMFYMESH_S3_SECRET_KEY": seaweedfs.secret_key,
           "COMFYMESH_CUSTOM_NODES_DIRS": str(pack), "COMFYMESH_INTERRUPT_GRACE_SECONDS": "5",
           "COMFYMESH_EXECUTOR_REGISTER": "false", **secret_env()}  # a lone executor: no fleet to join
    process = ManagedProcess([sys.executable, "-m", "gpu_executor", "serve"], log_path=home / "executor.log",
                             env=env, cwd=ROOT, name="executor").start()
    try:
        process.wait_ready(lambda: check(f"127.0.0.1:{port}", timeout=1.0), 120)
        yield f"127.0.0.1:{port}"
    finally:
        assert process.stop(grace=20) == 0, process.log_tail()


def _request(graph: dict[str, Any], execution_id: str, attempt: int = 1) -> executor_service_pb2.ExecuteRequest:
    return executor_service_pb2.ExecuteRequest(execution_id=execution_id, attempt=attempt, graph=graph_to_proto(graph),
                                               output_prefix=f"executions/{execution_id}/attempt-{attempt}")


def _execute(address: str, request: executor_service_pb2.ExecuteRequest) -> list[pb.ExecutionEvent]:
    with authed_channel(address, internal_bearer()) as channel:
        return list(executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Execute(request, timeout=120))


def _reason(status: Any) -> str:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


def test_execute_streams_events_and_stores_outputs(executor: str, seaweedfs: SeaweedFSServer) -> None:
    events = _execute(executor, _request(IMAGE_GRAPH, "e1"))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "succeeded"
    assert kinds.count("succeeded") + kinds.count("failed") + kinds.count("cancelled") == 1
    assert [e.node_started.node_id for e in events if e.WhichOneof("kind") == "node_started"] == ["1", "2", "3"]
    assert [int(e.event_id) for e in events] == list(range(1, len(events) + 1))
    (output,) = events[-1].succeeded.outputs
    assert (output.filename, output.subfolder, output.width, output.height) == ("out_00001_.png", "sub", 32, 16)
    assert output.object_key == "executions/e1/attempt-1/output/sub/out_00001_.png"
    data = seaweedfs.client().get_object("comfymesh-outputs", output.object_key).read()
    assert hashlib.sha256(data).hexdigest() == output.sha256 and len(data) == output.size_bytes
    assert [t.node_id for t in events[-1].succeeded.node_timings] == ["1", "2", "3"]


def test_repeating_an_attempt_replays_it(executor: str) -> None:
    first = _execute(executor, _request(IMAGE_GRAPH, "e2"))
    again = _execute(executor, _request(IMAGE_GRAPH, "e2"))
    assert [e.SerializeToString() for e in again] == [e.SerializeToString() for e in first]


def test_a_second_concurrent_execute_is_refused(executor: str) -> None:
    with authed_channel(executor, internal_bearer()) as channel:
        stub = executor_service_pb2_grpc.GpuExecutorServiceStub(channel)
        running = stub.Execute(_request(SLOW_GRAPH, "slow-1"), timeout=120)
        assert next(running).WhichOneof("kind") == "started"
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Execute(_request(IMAGE_GRAPH, "e3"), timeout=30))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "EXECUTOR_BUSY" in str(caught.value.trailing_metadata())  # type: ignore[attr-defined]
        description = stub.Describe(executor_service_pb2.DescribeRequest(), timeout=10)
        assert description.current_execution_id == "slow-1"
        interrupted = stub.Interrupt(executor_service_pb2.InterruptRequest(execution_id="slow-1"), timeout=10)
        rest = list(running)
        assert interrupted.interrupted, [str(e) for e in rest]
        assert rest[-1].WhichOneof("kind") == "cancelled"


def test_a_crashing_node_is_contained_and_retryable(executor: str) -> None:
    events = _execute(executor, _request({"1": {"class_type": "Crash", "inputs": {"code": 3}}}, "crash-1"))
    final = events[-1]
    assert final.WhichOneof("kind") == "failed" and final.failed.retryable
    assert _reason(final.failed.error) == "EXECUTOR_LOST"
    again = _execute(executor, _request(IMAGE_GRAPH, "after-crash"))  # a fresh worker took over
    assert again[-1].WhichOneof("kind") == "succeeded"


def test_a_node_ignoring_the_interrupt_is_killed_after_the_grace_period(executor: str) -> None:
    with authed_channel(executor, internal_bearer()) as channel:
        stub = executor_service_pb2_grpc.GpuExecutorServiceStub(channel)
        running = stub.Execute(_request({"1": {"class_type": "Stubborn", "inputs": {"seconds": 120}}}, "stubborn"),
                               timeout=120)
        assert next(running).WhichOneof("kind") == "started"
        assert next(running).WhichOneof("kind") == "node_started"
        assert stub.Interrupt(executor_service_pb2.InterruptRequest(), timeout=10).interrupted
        final = list(running)[-1]
    assert final.WhichOneof("kind") == "failed" and final.failed.retryable
    assert _reason(final.failed.error) == "EXECUTOR_LOST" and "ignored the interrupt" in final.failed.error.message
    assert _execute(executor, _request(IMAGE_GRAPH, "after-stubborn"))[-1].WhichOneof("kind") == "succeeded"


def test_invalid_graphs_and_requests_are_typed(executor: str) -> None:
    events = _execute(executor, _request({"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8,
                                                                                      "batch_size": 1, "color": 0}},
                                          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
                                         "bad-1"))
    assert len(events) == 1 and _reason(events[0].failed.error) == "WORKFLOW_INVALID"
    assert not events[0].failed.retryable
    with pytest.raises(grpc.RpcError) as caught:
        _execute(executor, executor_service_pb2.ExecuteRequest(execution_id="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_private_input_urls_are_refused(executor: str) -> None:
    request = _request(IMAGE_GRAPH, "url-1")
    request.inputs.add(name="in.png", url="http://127.0.0.1:9/secret.png")
    events = _execute(executor, request)
    assert _reason(events[-1].failed.error) == "URL_NOT_ALLOWED"


def test_interrupt_of_nothing_says_so(executor: str) -> None:
    with authed_channel(executor, internal_bearer()) as channel:
        reply = executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Interrupt(
            executor_service_pb2.InterruptRequest(execution_id="nope"), timeout=10)
    assert not reply.interrupted




def test_describe_reports_the_device_and_the_catalog(executor: str) -> None:
    with authed_channel(executor, internal_bearer()) as channel:
        description = executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Describe(
            executor_service_pb2.DescribeRequest(include_catalog=True), timeout=30)
    assert description.device.kind in ("cpu", "cuda") and description.device.memory_total_bytes > 0
    assert description.state == executor_service_pb2.EXECUTOR_STATE_IDLE
    assert description.executions_completed >= 1
    names = {d.name for d in description.catalog}
    assert {"KSampler", "SaveImage", "Crash", "Stubborn"} <= names and description.catalog_hash
