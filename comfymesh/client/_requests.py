"""Request building shared by the blocking and the asyncio clients: everything that does not do I/O on a channel."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from google.protobuf import duration_pb2
from grpc import StatusCode

from comfymesh.client.errors import FieldViolation, InvalidArgumentError
from comfymesh.client.events import ExecutionState
from comfymesh.client.workflow import Override, Workflow
from comfymesh.common.v1 import execution_event_pb2
from comfymesh.model.v1 import model_service_pb2 as model_pb
from comfymesh.webhook.v1 import webhook_service_pb2 as webhook_pb
from comfymesh.workflow.v1 import workflow_service_pb2 as workflow_pb

WorkflowSource = Workflow | Mapping[str, Any] | str | os.PathLike[str]
#: Called with (bytes sent, total bytes) after each chunk of an upload.
ProgressCallback = Callable[[int, int], None]
CHUNK_BYTES = 1024 * 1024
# ComfyUI's folder names (and a few obvious spellings) for the model kinds.
_KIND_ALIASES = {
    "checkpoint": model_pb.MODEL_KIND_CHECKPOINT, "checkpoints": model_pb.MODEL_KIND_CHECKPOINT,
    "lora": model_pb.MODEL_KIND_LORA, "loras": model_pb.MODEL_KIND_LORA,
    "vae": model_pb.MODEL_KIND_VAE,
    "controlnet": model_pb.MODEL_KIND_CONTROLNET,
    "upscale_model": model_pb.MODEL_KIND_UPSCALE_MODEL, "upscale_models": model_pb.MODEL_KIND_UPSCALE_MODEL,
    "embedding": model_pb.MODEL_KIND_EMBEDDING, "embeddings": model_pb.MODEL_KIND_EMBEDDING,
    "text_encoder": model_pb.MODEL_KIND_TEXT_ENCODER, "text_encoders": model_pb.MODEL_KIND_TEXT_ENCODER,
    "clip": model_pb.MODEL_KIND_TEXT_ENCODER,
    "diffusion_model": model_pb.MODEL_KIND_DIFFUSION_MODEL, "diffusion_models": model_pb.MODEL_KIND_DIFFUSION_MODEL,
    "unet": model_pb.MODEL_KIND_DIFFUSION_MODEL,
    "clip_vision": model_pb.MODEL_KIND_CLIP_VISION,
}


def invalid(field: str, message: str) -> InvalidArgumentError:
    """A client-side refusal, shaped like the server's."""
    return InvalidArgumentError(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", message,
                           field_violations=(FieldViolation(field, message),), from_server=False)


def as_workflow(source: WorkflowSource) -> Workflow:
    """A Workflow from a Workflow, a dict in API format, or the path of a `workflow_api.json`."""
    if isinstance(source, Workflow):
        return source
    if isinstance(source, Mapping):
        return Workflow(source)
    return Workflow.load(Path(source))


def duration(value: float | timedelta | None) -> duration_pb2.Duration | None:
    """Seconds (or a timedelta) as a Duration; None stays unset."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise invalid("timeout", f"a timeout must be positive, not {seconds:g}s")
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def submit_request(workflow: WorkflowSource, *, overrides: Iterable[Override | str] = (), priority: int = 0,
                   inputs: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
                   request_id: str | None = None, webhook_url: str = "",
                   queue_timeout: float | timedelta | None = None,
                   run_timeout: float | timedelta | None = None) -> workflow_pb.SubmitExecutionRequest:
    """A SubmitExecution request; `inputs` maps input names to object keys already uploaded."""
    graph = as_workflow(workflow).with_overrides(overrides)
    request = workflow_pb.SubmitExecutionRequest(
        workflow_json=graph.to_json(),  # the exact encoding: seeds above 2^53 survive
        priority=priority, request_id=request_id or str(uuid.uuid4()), webhook_url=webhook_url,
        labels=dict(labels or {}),
        inputs=[execution_event_pb2.InputFile(name=name, object_key=key) for name, key in (inputs or {}).items()])
    if (queue := duration(queue_timeout)) is not None:
        request.queue_timeout.CopyFrom(queue)
    if (run := duration(run_timeout)) is not None:
        request.run_timeout.CopyFrom(run)
    return request


def list_request(*, states: Iterable[ExecutionState | str] = (), labels: Mapping[str, str] | None = None,
                 page_size: int = 0) -> workflow_pb.ListExecutionsRequest:
    """A ListExecutions request for the first page."""
    parsed = [state if isinstance(state, ExecutionState) else ExecutionState.parse(state) for state in states]
    return workflow_pb.ListExecutionsRequest(
        page_size=page_size, states=[execution_event_pb2.ExecutionState.ValueType(state) for state in parsed],
        label_selectors=[f"{key}={value}" for key, value in (labels or {}).items()])


def input_bytes(source: bytes | str | os.PathLike[str], name: str) -> tuple[str, bytes]:
    """(file name, bytes) of an input given as bytes or as a path."""
    if isinstance(source, bytes):
        return name, source
    path = Path(source)
    try:
        return path.name, path.read_bytes()
    except OSError as exc:
        raise invalid("inputs", f"cannot read input {name!r} from {path}: {exc.strerror or exc}") from None


def model_kind(kind: str | int) -> model_pb.ModelKind.ValueType:
    """A ModelKind from `lora`, `loras`, `MODEL_KIND_LORA` or the enum number."""
    if isinstance(kind, int):
        if kind not in model_pb.ModelKind.values() or kind == model_pb.MODEL_KIND_UNSPECIFIED:
            raise invalid("kind", f"unknown model kind {kind}")
        return model_pb.ModelKind.ValueType(kind)
    text = kind.strip().lower().removeprefix("model_kind_")
    if text in _KIND_ALIASES:
        return _KIND_ALIASES[text]
    raise invalid("kind", f"unknown model kind {kind!r}; kinds: " + ", ".join(sorted(
        name.removeprefix("MODEL_KIND_").lower() for name, _ in model_pb.ModelKind.items()
        if name != "MODEL_KIND_UNSPECIFIED")))


def upload_metadata(path: Path, *, name: str, kind: model_pb.ModelKind.ValueType, request_id: str,
                    size: int, digest: str) -> model_pb.UploadModelRequest:
    """The first UploadModel message: what is uploaded, with the size and sha256 the server checks at the end."""
    return model_pb.UploadModelRequest(metadata=model_pb.UploadModelMetadata(
        name=name or path.name, kind=kind, size_bytes=size, sha256=digest, request_id=request_id))


def upload_model_messages(path: Path, *, name: str, kind: model_pb.ModelKind.ValueType, request_id: str,
                          progress: ProgressCallback | None,
                          chunk_bytes: int = CHUNK_BYTES) -> Iterator[model_pb.UploadModelRequest]:
    """The UploadModel stream for a file: metadata, then the bytes, reporting progress after each chunk."""
    size, digest = file_digest(path)
    yield upload_metadata(path, name=name, kind=kind, request_id=request_id, size=size, digest=digest)
    sent = 0
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            yield model_pb.UploadModelRequest(chunk=chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent, size)


def file_digest(path: Path) -> tuple[int, str]:
    """(size, hex sha256) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise invalid("path", f"cannot read {path}: {exc.strerror or exc}") from None
    return size, digest.hexdigest()


def webhook_event_types(names: Iterable[str]) -> list[webhook_pb.EventType.ValueType]:
    """EventTypes from `succeeded`, `EXECUTION_SUCCEEDED` or `EVENT_TYPE_EXECUTION_SUCCEEDED`."""
    types: list[webhook_pb.EventType.ValueType] = []
    for name in names:
        key = "EVENT_TYPE_EXECUTION_" + name.strip().upper().removeprefix("EVENT_TYPE_").removeprefix("EXECUTION_")
        if key not in dict(webhook_pb.EventType.items()):
            raise invalid("event_types", f"unknown webhook event type {name!r}; types: " + ", ".join(
                k.removeprefix("EVENT_TYPE_EXECUTION_").lower() for k, _ in webhook_pb.EventType.items()
                if k != "EVENT_TYPE_UNSPECIFIED"))
        types.append(webhook_pb.EventType.Value(key))
    return types


def output_name(output: execution_event_pb2.OutputFile) -> str:
    """The name DownloadOutput takes: `subfolder/filename`, or the file name alone."""
    return f"{output.subfolder}/{output.filename}" if output.subfolder else output.filename


def output_path(directory: Path, output: execution_event_pb2.OutputFile) -> Path:
    """Where an output is saved under `directory`; a name that would escape it (absolute, `..`) is refused."""
    relative = PurePosixPath(output_name(output))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise invalid("outputs", f"refusing to save output {output_name(output)!r} outside {directory}")
    return directory.joinpath(*relative.parts)
