"""`ServiceError` ⇄ `google.rpc.Status` (AIP-193): ErrorInfo always, BadRequest and RetryInfo when relevant."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service_runtime.errors.model import FieldViolation, ServiceError
from service_runtime.errors.reasons import ERROR_DOMAIN, Reason


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status_proto(error: ServiceError) -> status_pb2.Status:
    """The rich status for an error; the first detail is always its ErrorInfo."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=str(error.reason), domain=ERROR_DOMAIN,
                                                 metadata=dict(error.metadata)))]
    if error.field_violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description, reason=v.reason)
            for v in error.field_violations
        ])))
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=error.code.value[0], message=error.message,  # type: ignore[no-any-return]
                             details=details)


def to_grpc_status(error: ServiceError) -> grpc.Status:
    """What `context.abort_with_status` takes: code, message and the `grpc-status-details-bin` trailer."""
    status: grpc.Status = rpc_status.to_status(to_status_proto(error))
    return status


def from_status_proto(status: status_pb2.Status) -> ServiceError:
    """Rebuilds a ServiceError from a rich status (client side, or an executor's failed event)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    reason, metadata = Reason.INTERNAL_ERROR, {}
    violations: list[FieldViolation] = []
    retry: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = Reason(info.reason) if info.reason in Reason.__members__ else Reason.INTERNAL_ERROR
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            retry = info_retry.retry_delay.ToNanoseconds() / 1e9
    return ServiceError(code, reason, status.message, metadata, violations, retry)


def from_rpc_error(error: grpc.RpcError) -> ServiceError:
    """A client-side view of a failed call, with its ErrorInfo when the server sent one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return ServiceError(code, Reason.INTERNAL_ERROR if code == grpc.StatusCode.INTERNAL
                            else Reason.BACKEND_UNAVAILABLE, details or "")
    return from_status_proto(status)


