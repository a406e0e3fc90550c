"""Submitting an execution: validate, write the row (QUEUED), enqueue, announce — and return at once.

Order matters for durability: the row is written before the job is enqueued, so a dispatcher never leases a job
whose row does not exist yet; if this process dies between the two, the execution service's reconciler enqueues
the row it finds without a job. A refused enqueue (queue full) deletes the row again, so a refused submission
leaves nothing behind and a retry with the same request_id is a fresh attempt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import grpc.aio

from comfymesh.queue.v1 import queue_service_pb2 as qpb
from comfymesh.queue.v1 import queue_service_pb2_grpc as qgrpc
from gpu_executor.engine.model_inputs import is_model_input
from service_runtime.auth.interceptor import TENANT_METADATA
from service_runtime.auth.quotas import SubmissionQuotas
from service_runtime.errors import FieldViolation, Reason, ServiceError, invalid_argument
from service_runtime.errors.status import from_rpc_error
from service_runtime.ids import time_ordered_id
from service_runtime.transport.graph_codec import Graph
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.jobs import job_of
from services.execution_store.lifecycle import ExecutionLifecycle
from services.execution_store.repository import ExecutionRepository
from services.model.client import ModelCatalog
from services.workflow.catalog import ExecutorCatalog
from services.workflow.files import WorkflowFiles, input_key_belongs_to
from services.workflow.validation import WorkflowValidation, raise_if_invalid, validate_graph


@dataclass(frozen=True)
class InputRequest:
    """One input file as submitted: exactly one of data, object_key and url."""

    name: str
    data: bytes | None = None
    object_key: str = ""
    url: str = ""
    content_type: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class Submission:
    tenant: str
    graph: Graph
    priority: int = 0
    request_id: str = ""
    webhook_url: str = ""
    inputs: tuple[InputRequest, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    queue_timeout_seconds: float | None = None
    run_timeout_seconds: float | None = None


def _prefixed(error: ServiceError, prefix: str) -> ServiceError:
    """The same error with its field paths under `prefix` (e.g. an upload's "data" → "inputs[0].data")."""
    violations = [dataclasses.replace(v, field=f"{prefix}.{v.field}") for v in error.field_violations]
    return dataclasses.replace(error, field_violations=violations)


class ExecutionSubmitter:
    def __init__(self, repository: ExecutionRepository, lifecycle: ExecutionLifecycle,
                 queue: qgrpc.QueueServiceAsyncStub, catalog: ExecutorCatalog, files: WorkflowFiles,
                 models: ModelCatalog | None = None, quotas: SubmissionQuotas | None = None) -> None:
        self._models = models
        self._quotas = quotas
        self._repository = repository
        self._lifecycle = lifecycle
        self._queue = queue
        self._catalog = catalog
        self._files = files

    async def submit(self, submission: Submission) -> tuple[ExecutionRecord, int]:
        """Returns the execution and its queue position (jobs ahead of it)."""
        if submission.request_id:
            existing = await self._repository.get_by_request_id(submission.tenant, submission.request_id)
            if existing is not None:
                return existing, await self.position(existing)
        names = [item.name for item in submission.inputs]
        graph, result = await self.validate(submission.graph, submission.tenant, names)
        raise_if_invalid(result)
        if self._quotas is not None:  # queued / in-flight executions and the monthly budget, before the row exists
            await self._quotas.check(submission.tenant)
        now = datetime.now(UTC)
        record = ExecutionRecord(
            id=time_ordered_id(), tenant=submission.tenant, state=ExecutionState.QUEUED, graph=graph,
            create_time=now, update_time=now, queue_time=now, priority=submission.priority,
            inputs=await self._store_inputs(submission), labels=dict(submission.labels),
            webhook_url=submission.webhook_url, request_id=submission.request_id or None,
            queue_timeout_seconds=submission.queue_timeout_seconds,
            run_timeout_seconds=submission.run_timeout_seconds)
        try:
            await self._repository.add(record)
        except ServiceError as error:
            if error.reason is not Reason.ALREADY_EXISTS or not submission.request_id:
                raise
            # A concurrent retry with the same request_id won the insert: answer with its execution.
            existing = await self._repository.get_by_request_id(submission.tenant, submission.request_id)
            if existing is None:
                raise
            return existing, await self.position(existing)
        try:
            job = await self._queue.EnqueueJob(qpb.EnqueueJobRequest(job=job_of(record)))
        except grpc.aio.AioRpcError as exc:
            refused = from_rpc_error(exc)
            if refused.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT):
                await self._repository.delete_unstarted(record.id)
                raise refused from exc
            # Anything else (the queue unreachable): the row stands, and the reconciler will enqueue it.
            return record, 0
        await self._lifecycle.queued(record, job.position)
        return record, job.position

    async def validate(self, graph: Graph, tenant: str, input_files: list[str] | None = None
                       ) -> tuple[Graph, WorkflowValidation]:
        """ValidateWorkflow's check: the fleet catalog plus the caller's uploaded models."""
        return await validate_graph(graph, self._catalog, input_files=input_files,
                                    models=await self._uploaded_models(graph, tenant))

    async def _uploaded_models(self, graph: Graph, tenant: str) -> dict[str, set[str]] | None:
        """The caller's models in ModelService when the graph has a loader input (None: none needed, or the model
        service is unreachable — then the executors' own lists decide)."""
        if not any(is_model_input(name) for node in graph.values() if isinstance(node, dict)
                   for name in (node.get("inputs") or {})):
            return None
        return await self.uploaded_models(tenant)

    async def uploaded_models(self, tenant: str) -> dict[str, set[str]] | None:
        """Folder → the tenant's model names in ModelService (its own and the shared ones)."""
        if self._models is None:
            return None
        try:
            # The tenant is part of the cache key: one tenant's model names are never served to another.
            return await self._models.names(((TENANT_METADATA, tenant),))
        except ServiceError:
            return None

    async def position(self, record: ExecutionRecord) -> int:
        if record.state is not ExecutionState.QUEUED:
            return 0
        try:
            job = await self._queue.GetJob(qpb.GetJobRequest(job_id=record.id))
        except grpc.aio.AioRpcError:
            return 0
        return int(job.position)

    async def _store_inputs(self, submission: Submission) -> list[dict[str, str]]:
        """Inline bytes are uploaded now (the row keeps only their object key), keys are checked against the
        caller's tenant, URLs are kept for the executor to fetch (it applies the SSRF guard)."""
        stored: list[dict[str, str]] = []
        seen: set[str] = set()
        for index, item in enumerate(submission.inputs):
            prefix = f"inputs[{index}]"
            if item.name in seen:
                raise invalid_argument("input names must be unique", FieldViolation(
                    f"{prefix}.name", f"{item.name!r} is given twice", "DUPLICATE_INPUT"), reason=Reason.INPUT_INVALID)
            seen.add(item.name)
            entry = {"name": item.name, "content_type": item.content_type, "sha256": item.sha256}
            if item.data is not None:
                try:
                    uploaded = await self._files.upload_input(submission.tenant, item.name, item.data,
                                                              item.content_type)
                except ServiceError as error:
                    raise _prefixed(error, prefix) from None
                entry.update(object_key=uploaded.object_key, sha256=uploaded.sha256,
                             content_type=uploaded.content_type)
            elif item.object_key:
                if not input_key_belongs_to(submission.tenant, item.object_key):
                    # Another tenant's key answers like a missing one (ids never leak across tenants).
                    raise invalid_argument("the input object does not exist", FieldViolation(
                        f"{prefix}.object_key", "no such uploaded input", "INPUT_NOT_FOUND"),
                        reason=Reason.INPUT_INVALID)
                entry["object_key"] = item.object_key
            else:
                entry["url"] = item.url
            stored.append(entry)
        return stored
