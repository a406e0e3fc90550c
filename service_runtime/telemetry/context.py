"""Per-request context (request id, execution id, RPC method) carried in contextvars.

gRPC aio runs every RPC in its own task, and a task copies the context when it starts, so values set here stay
with that RPC (and the tasks it spawns) without being reset: resetting tokens from async generators can fail with
"created in a different Context" (grpc/grpc PR #42295).
"""

from __future__ import annotations

import contextvars
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
execution_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("execution_id", default="")
rpc_method_var: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_method", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


def bind_execution(execution_id: str) -> None:
    """Tags every later log line of this task with the execution it works on."""
    execution_id_var.set(execution_id)
# The ErrorInfo reason of the error an RPC ended with, for the outer interceptors' metrics and logs.
error_reason_var: contextvars.ContextVar[str] = contextvars.ContextVar("error_reason", default="")
