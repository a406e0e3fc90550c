"""The error model: reasons match the published enum, and statuses carry ErrorInfo, BadRequest and RetryInfo."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from comfymesh.common.v1 import error_reason_pb2
from service_runtime.errors import ERROR_DOMAIN, FieldViolation, Reason, ServiceError, invalid_argument, not_found
from service_runtime.errors.status import from_status_proto, to_status_proto

pytestmark = pytest.mark.unit


def test_python_reasons_are_exactly_the_proto_enum() -> None:
    published = {v.name for v in error_reason_pb2.ErrorReason.DESCRIPTOR.values} - {"ERROR_REASON_UNSPECIFIED"}
    assert {r.value for r in Reason} == published
    assert all(r.name == r.value for r in Reason)


def test_reason_names_follow_aip_193() -> None:
    import re

    for reason in Reason:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+[A-Z0-9]", reason.value) and len(reason.value) <= 63


def test_status_always_starts_with_error_info() -> None:
    status = to_status_proto(not_found("execution x not found", Reason.EXECUTION_NOT_FOUND, execution_id="x"))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("EXECUTION_NOT_FOUND", ERROR_DOMAIN,
                                                                {"execution_id": "x"})
    assert len(status.details) == 1


def test_bad_request_and_retry_info_round_trip() -> None:
    error = ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED, "slow down", {"limit": "5"},
                         [FieldViolation("a.b", "too big", "TOO_BIG")], retry_after_seconds=1.5)
    back = from_status_proto(to_status_proto(error))
    assert back == error


def test_invalid_argument_carries_every_violation() -> None:
    error = invalid_argument("bad", FieldViolation("x", "no"), FieldViolation("y", "nope"))
    status = to_status_proto(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["x", "y"]
