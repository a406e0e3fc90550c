"""Typed exceptions for failed calls and failed executions, built from the server's `google.rpc.Status`.

Every ComfyMesh error carries a `google.rpc.ErrorInfo` (reason, metadata), bad input a `google.rpc.BadRequest`
(field violations) and throttling a `google.rpc.RetryInfo`; they travel in the `grpc-status-details-bin` trailer.
Errors raised before a server answered (connection refused, a dropped stream) have no ErrorInfo: their reason is
the gRPC code's name and `from_server` is False, which is how watch tells a transport drop from a real answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "comfymesh.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class ComfyMeshError(Exception):
    """A failed call or execution: the gRPC code, the ErrorInfo reason, and whatever details the server sent."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, *,
                 field_violations: tuple[FieldViolation, ...] = (), retry_after: float | None = None,
                 metadata: dict[str, str] | None = None, from_server: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.field_violations = field_violations
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})
        self.from_server = from_server

    def __str__(self) -> str:
        """One line: `REASON: message: field: description; field: description`."""
        text = f"{self.reason}: {self.message}" if self.message else self.reason
        # Violations the message does not already say (client-side errors often repeat it in their one violation).
        extra = [str(v) for v in self.field_violations if v.description not in self.message]
        if extra:
            text += ": " + "; ".join(extra)
        return " ".join(text.split())  # one line, whatever the server's message contained

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class InvalidArgumentError(ComfyMeshError):
    """The request (or the workflow) is malformed or invalid; see `field_violations`."""


class NotFoundError(ComfyMeshError):
    """The execution, model, key or webhook does not exist (or belongs to another tenant)."""


class AlreadyExistsError(ComfyMeshError):
    """A resource with this id or request id exists with different content."""


class FailedPreconditionError(ComfyMeshError):
    """The resource's state does not allow the operation (e.g. cancelling a finished execution)."""


class UnauthenticatedError(ComfyMeshError):
    """No API key, or one that is malformed, expired or revoked."""


class PermissionDeniedError(ComfyMeshError):
    """The key lacks the scope the call requires (`metadata["required_scope"]`)."""


class ResourceExhaustedError(ComfyMeshError):
    """A limit was reached (queue full, quota, budget); `retry_after` says when to try again, if known."""


class RateLimitedError(ResourceExhaustedError):
    """The caller exceeded its request rate; `retry_after` says when to try again."""


class UnavailableError(ComfyMeshError):
    """The server or one of its backends cannot be reached; retry with backoff."""


class DeadlineExceededError(ComfyMeshError):
    """The call's deadline passed (or, client-side, a `wait` timed out)."""


class CallCancelledError(ComfyMeshError):
    """The call was cancelled."""


class UnimplementedError(ComfyMeshError):
    """This deployment does not serve the call."""


class InternalError(ComfyMeshError):
    """An unexpected server-side failure."""


class ExecutionFailedError(ComfyMeshError):
    """An execution finished with an error (a node raised, a deadline passed, ...): its status, as an exception."""


_BY_CODE: dict[grpc.StatusCode, type[ComfyMeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def error_class(code: grpc.StatusCode, reason: str) -> type[ComfyMeshError]:
    """The exception class for a code (and, for RESOURCE_EXHAUSTED, the reason that narrows it)."""
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "RATE_LIMITED":
        return RateLimitedError
    return _BY_CODE.get(code, ComfyMeshError)


def _code(number: int) -> grpc.StatusCode:
    return next((code for code in grpc.StatusCode if code.value[0] == number), grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True)
class _Parsed:
    code: grpc.StatusCode
    reason: str
    message: str
    violations: tuple[FieldViolation, ...]
    retry_after: float | None
    metadata: dict[str, str]


def _parse(status: status_pb2.Status) -> _Parsed:
    code = _code(status.code)
    reason, metadata = "", {}
    violations: tuple[FieldViolation, ...] = ()
    retry_after: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = str(info.reason), dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += tuple(FieldViolation(str(v.field), str(v.description), str(v.reason))
                                for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return _Parsed(code, reason or code.name, str(status.message), violations, retry_after, metadata)


def from_status(status: status_pb2.Status) -> ComfyMeshError:
    """The exception for a rich status (a call's trailers, or a retrying event's error)."""
    parsed = _parse(status)
    return error_class(parsed.code, parsed.reason)(
        parsed.code, parsed.reason, parsed.message, field_violations=parsed.violations,
        retry_after=parsed.retry_after, metadata=parsed.metadata)


def execution_failure(status: status_pb2.Status) -> ExecutionFailedError:
    """The exception for a failed execution's `error` (reason e.g. NODE_EXECUTION_FAILED, node id in metadata)."""
    parsed = _parse(status)
    return ExecutionFailedError(parsed.code, parsed.reason, parsed.message, field_violations=parsed.violations,
                           retry_after=parsed.retry_after, metadata=parsed.metadata)


def from_rpc_error(error: grpc.RpcError) -> ComfyMeshError:
    """The typed exception for a failed call (sync or asyncio), with the server's details when it sent them."""
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None  # type: ignore[arg-type]
    if status is not None:
        return from_status(status)
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    message = (details_of() if callable(details_of) else None) or str(error)
    return error_class(code, code.name)(code, code.name, str(message), from_server=False)
