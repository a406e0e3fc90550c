"""Error mapping (the server's own encoder → the SDK's exceptions), target parsing and typed events."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from comfymesh.client import (
    ComfyMeshError,
    ExecutionFailedError,
    ExecutionState,
    Failed,
    InvalidArgumentError,
    NodeProgress,
    NotFoundError,
    PermissionDeniedError,
    Queued,
    RateLimitedError,
    ResourceExhaustedError,
    Succeeded,
    Target,
    UnavailableError,
    parse_target,
)
from comfymesh.client._watch import ReconnectPolicy, WatchCursor
from comfymesh.client.errors import from_status
from comfymesh.client.events import event_from_proto
from comfymesh.common.v1 import execution_event_pb2 as pb
from service_runtime.errors import FieldViolation, Reason, ServiceError, invalid_argument, not_found
from service_runtime.errors.status import to_status_proto

pytestmark = pytest.mark.unit


def test_a_bad_graph_becomes_invalid_argument_with_reason_and_violations() -> None:
    status = to_status_proto(invalid_argument("the workflow is invalid (1 problem(s))",
                                              FieldViolation("workflow.3.inputs.seed", "must be >= 0", "VALUE_SMALLER"),
                                              reason=Reason.WORKFLOW_INVALID, node_id="3"))
    error = from_status(status)
    assert isinstance(error, InvalidArgumentError) and error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.message, error.metadata) == ("WORKFLOW_INVALID", "the workflow is invalid "
                                                             "(1 problem(s))", {"node_id": "3"})
    assert [(v.field, v.description, v.reason) for v in error.field_violations] == [
        ("workflow.3.inputs.seed", "must be >= 0", "VALUE_SMALLER")]
    assert str(error) == ("WORKFLOW_INVALID: the workflow is invalid (1 problem(s)): "
                          "workflow.3.inputs.seed: must be >= 0")
    assert error.from_server


@pytest.mark.parametrize(("error", "cls", "reason"), [
    (not_found("no such execution", Reason.EXECUTION_NOT_FOUND), NotFoundError, "EXECUTION_NOT_FOUND"),
    (ServiceError(grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED, "needs models:write",
                  {"required_scope": "models:write"}), PermissionDeniedError, "PERMISSION_DENIED"),
    (ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.QUEUE_FULL, "full"), ResourceExhaustedError,
     "QUEUE_FULL"),
    (ServiceError(grpc.StatusCode.UNAVAILABLE, Reason.BACKEND_UNAVAILABLE, "redis down"), UnavailableError,
     "BACKEND_UNAVAILABLE"),
])
def test_codes_map_to_exception_classes(error: ServiceError, cls: type[ComfyMeshError], reason: str) -> None:
    mapped = from_status(to_status_proto(error))
    assert type(mapped) is cls and mapped.reason == reason and mapped.metadata == dict(error.metadata)


def test_rate_limits_carry_the_retry_delay() -> None:
    status = to_status_proto(ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED, "slow down",
                                          retry_after_seconds=1.5))
    error = from_status(status)
    assert isinstance(error, RateLimitedError) and isinstance(error, ResourceExhaustedError)
    assert error.retry_after == 1.5


def test_a_status_without_error_info_is_named_by_its_code() -> None:
    error = from_status(status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="boom"))
    assert error.reason == "INTERNAL" and str(error) == "INTERNAL: boom"


@pytest.mark.parametrize(("url", "target"), [
    ("127.0.0.1:8080", Target("127.0.0.1", 8080, tls=False)),
    ("localhost", Target("localhost", 8080, tls=False)),
    ("http://mesh.example:9000", Target("mesh.example", 9000, tls=False)),
    ("http://mesh.example", Target("mesh.example", 80, tls=False)),
    ("https://mesh.example", Target("mesh.example", 443, tls=True)),
    ("https://mesh.example:8443/", Target("mesh.example", 8443, tls=True)),
    ("[::1]:8080", Target("::1", 8080, tls=False)),
])
def test_targets(url: str, target: Target) -> None:
    assert parse_target(url) == target


def test_ipv6_addresses_are_bracketed_for_grpc() -> None:
    assert parse_target("[::1]:8080").address == "[::1]:8080"


@pytest.mark.parametrize(("url", "why"), [
    ("", "empty"), ("ftp://host", "unsupported scheme"), ("http://host/v1", "no path"),
    ("host:99999", "bad port"), ("host:http", "bad port"), ("https://user:pw@host", "credentials"),
    ("http://:80", "no host"),
])
def test_bad_targets_are_invalid_argument(url: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError, match=why) as caught:
        parse_target(url)
    assert caught.value.field_violations[0].field == "url" and not caught.value.from_server


def _event(event_id: str, state: int = pb.EXECUTION_STATE_RUNNING, **kind: object) -> pb.ExecutionEvent:
    return pb.ExecutionEvent(event_id=event_id, execution_id="e1", attempt=1, state=state,  # type: ignore[arg-type]
                             event_time=timestamp_pb2.Timestamp(seconds=1_700_000_000), **kind)  # type: ignore[arg-type]


def test_events_are_typed() -> None:
    queued = event_from_proto(_event("1", pb.EXECUTION_STATE_QUEUED, queued=pb.ExecutionQueued(priority=5,
                                                                                             queue_position=2)))
    assert isinstance(queued, Queued) and (queued.priority, queued.queue_position) == (5, 2)
    assert queued.state is ExecutionState.QUEUED and not queued.terminal
    progress = event_from_proto(_event("2", node_progress=pb.NodeProgress(node_id="3", value=4, max=20)))
    assert isinstance(progress, NodeProgress) and (progress.node_id, progress.value, progress.max) == ("3", 4, 20)
    status = to_status_proto(ServiceError(grpc.StatusCode.INTERNAL, Reason.NODE_EXECUTION_FAILED, "it raised",
                                          {"node_id": "5"}))
    failed = event_from_proto(_event("3", pb.EXECUTION_STATE_FAILED, failed=pb.ExecutionFailed(error=status)))
    assert isinstance(failed, Failed) and failed.terminal
    assert isinstance(failed.error, ExecutionFailedError) and failed.error.reason == "NODE_EXECUTION_FAILED"
    assert failed.error.metadata == {"node_id": "5"}
    done = event_from_proto(_event("4", pb.EXECUTION_STATE_SUCCEEDED, succeeded=pb.ExecutionSucceeded(
        outputs=[pb.OutputFile(filename="a.png")])))
    assert isinstance(done, Succeeded) and done.terminal and done.outputs[0].filename == "a.png"


def test_the_watch_cursor_resumes_after_the_last_real_event_only() -> None:
    cursor = WatchCursor("e1", policy=ReconnectPolicy(max_attempts=2, initial_backoff=0.1))
    assert cursor.accept(_event("1", queued=pb.ExecutionQueued())) is not None
    assert cursor.accept(_event("9", heartbeat=pb.Heartbeat())) is None  # filtered, and not a resume point
    assert cursor.request().after_event_id == "1"
    assert cursor.accept(_event("1", queued=pb.ExecutionQueued())) is None  # a repeat of the resume point
    drop = UnavailableError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "connection reset", from_server=False)
    assert cursor.retry_delay(drop) == pytest.approx(0.1)
    assert cursor.retry_delay(None) == pytest.approx(0.2)  # a stream that ended before its terminal event
    with pytest.raises(UnavailableError):
        cursor.retry_delay(drop)  # max_attempts in a row without an event
    cursor.accept(_event("2", node_started=pb.NodeStarted(node_id="1")))
    assert cursor.retry_delay(drop) == pytest.approx(0.1)  # an event resets the count
    refused = from_status(to_status_proto(not_found("gone", Reason.EXECUTION_NOT_FOUND)))
    with pytest.raises(NotFoundError):
        cursor.retry_delay(refused)  # a real answer is final
    cursor.accept(_event("3", pb.EXECUTION_STATE_CANCELLED, cancelled=pb.ExecutionCancelled(reason="user")))
    assert cursor.finished
