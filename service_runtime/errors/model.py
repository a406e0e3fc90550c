"""The error model: domain code raises `ServiceError`s; the transport turns them into `google.rpc.Status`.

A `ServiceError` names a gRPC code, a stable reason (see `reasons.Reason`), a developer-facing message, the dynamic
values as ErrorInfo metadata, and, for bad input, field violations. Nothing here imports generated code or gRPC
servicers, so domain modules may raise these freely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from service_runtime.errors.reasons import Reason


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str  # a path such as "workflow.3.inputs.seed"
    description: str
    reason: str = ""  # an UPPER_SNAKE sub-reason, e.g. "value_smaller_than_min"


@dataclass
class ServiceError(Exception):
    """An error that reaches the caller as a typed `google.rpc.Status`."""

    code: grpc.StatusCode
    reason: Reason
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: Sequence[FieldViolation] = ()
    retry_after_seconds: float | None = None  # becomes google.rpc.RetryInfo (HTTP Retry-After)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"


def invalid_argument(message: str, *violations: FieldViolation, reason: Reason = Reason.INVALID_ARGUMENT,
                     **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata, violations)


def not_found(message: str, reason: Reason = Reason.RESOURCE_NOT_FOUND, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message, metadata)


def already_exists(message: str, reason: Reason = Reason.ALREADY_EXISTS, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, reason, message, metadata)


def failed_precondition(message: str, reason: Reason = Reason.FAILED_PRECONDITION, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, metadata)


def resource_exhausted(message: str, reason: Reason, retry_after_seconds: float | None = None,
                       **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, metadata,
                        retry_after_seconds=retry_after_seconds)


def unavailable(message: str, reason: Reason = Reason.BACKEND_UNAVAILABLE, retry_after_seconds: float | None = 1.0,
                **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message, metadata,
                        retry_after_seconds=retry_after_seconds)


def unauthenticated(message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED, message, metadata)


def permission_denied(message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED, message, metadata)


def not_implemented(method: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNIMPLEMENTED, Reason.NOT_IMPLEMENTED,
                        f"{method} is part of the contract but not served by this deployment yet", {"method": method})
