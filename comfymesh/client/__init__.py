"""The ComfyMesh Python SDK: submit ComfyUI workflows, follow them, fetch their outputs, manage models, keys and
webhooks, over gRPC with an API key.

    from comfymesh.client import ComfyMesh, Workflow

    with ComfyMesh("127.0.0.1:8080", api_key="cm_...") as mesh:
        execution = mesh.submit("workflow_api.json", overrides=["3.seed=42", "Positive Prompt.text=a cat"])
        for event in mesh.watch(execution.id):
            print(event)
        paths = mesh.download_outputs(execution.id, "outputs")

`AsyncComfyMesh` is the same surface for asyncio. Failures raise `ComfyMeshError` subclasses carrying the server's
ErrorInfo reason, metadata, field violations and retry delay.
"""

from comfymesh.client._channel import Target, parse_target
from comfymesh.client._watch import ReconnectPolicy
from comfymesh.client.aio import AsyncComfyMesh
from comfymesh.client.errors import (
    AlreadyExistsError,
    CallCancelledError,
    ComfyMeshError,
    DeadlineExceededError,
    ExecutionFailedError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    execution_failure,
)
from comfymesh.client.events import (
    Cancelled,
    Event,
    ExecutionState,
    Failed,
    Heartbeat,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    NodeStarted,
    Preview,
    Queued,
    Retrying,
    Started,
    Succeeded,
    Unknown,
)
from comfymesh.client.sync import ComfyMesh
from comfymesh.client.workflow import Override, Workflow, WorkflowError

__all__ = [
    "AlreadyExistsError", "AsyncComfyMesh", "CallCancelledError", "Cancelled", "ComfyMesh", "ComfyMeshError",
    "DeadlineExceededError", "Event", "ExecutionFailedError", "ExecutionState", "Failed", "FailedPreconditionError",
    "FieldViolation", "Heartbeat", "InternalError", "InvalidArgumentError", "NodeExecuted", "NodeProgress",
    "NodeStarted", "NodesCached", "NotFoundError", "Override", "PermissionDeniedError", "Preview", "Queued",
    "RateLimitedError", "ReconnectPolicy", "ResourceExhaustedError", "Retrying", "Started", "Succeeded", "Target",
    "UnauthenticatedError", "UnavailableError", "UnimplementedError", "Unknown", "Workflow", "WorkflowError",
    "execution_failure", "parse_target",
]
