"""The error model shared by every service (see model.py), its wire form (status.py) and the reason list."""

from service_runtime.errors.model import (
    FieldViolation,
    ServiceError,
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
    not_implemented,
    permission_denied,
    resource_exhausted,
    unauthenticated,
    unavailable,
)
from service_runtime.errors.reasons import ERROR_DOMAIN, Reason

__all__ = [
    "ERROR_DOMAIN",
    "FieldViolation",
    "Reason",
    "ServiceError",
    "already_exists",
    "failed_precondition",
    "invalid_argument",
    "not_found",
    "not_implemented",
    "permission_denied",
    "resource_exhausted",
    "unauthenticated",
    "unavailable",
]
