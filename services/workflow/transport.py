"""WorkflowService over gRPC: request validation and proto ⇄ domain conversion around the domain services
(submission.py, watch.py, cancellation.py, validation.py, files.py, queries.py)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import grpc.aio
from google.api import httpbody_pb2

from comfymesh.common.v1 import catalog_pb2, execution_event_pb2
from comfymesh.workflow.v1 import execution_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from service_runtime.errors import FieldViolation, ServiceError, invalid_argument, not_implemented
from service_runtime.grpc.identity import caller_tenant
from service_runtime.object_store import ObjectStore
from service_runtime.pagination import PageSize
from service_runtime.settings import Settings
from service_runtime.transport.catalog_codec import object_info_from_definition
from service_runtime.transport.graph_codec import graph_from_request, graph_to_proto
from services.execution_store.domain import ExecutionFilter
from services.execution_store.events import EventLog
from services.workflow.cancellation import ExecutionCanceller
from services.workflow.catalog import ExecutorCatalog
from services.workflow.catalog_models import with_uploaded_models
from services.workflow.convert import add_output_urls, execution_to_proto, state_from_proto, validation_to_proto
from services.workflow.files import WorkflowFiles
from services.workflow.queries import ExecutionQueries, check_execution_id
from services.workflow.submission import ExecutionSubmitter, InputRequest, Submission
from services.workflow.validation import validate_graph
from services.workflow.watch import ExecutionWatcher

NODE_PAGE_SIZE = PageSize(default=100, maximum=1000)
PRIORITY_RANGE = (-100, 100)
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_LABELS = 64
LABEL_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
MAX_LABEL_VALUE = 256
MAX_INPUTS = 64


@dataclass(frozen=True)
class ExecutionOperations:
    """Submit, watch and cancel (they need Redis and the other services; tests of the other RPCs may omit them)."""

    submitter: ExecutionSubmitter
    watcher: ExecutionWatcher
    canceller: ExecutionCanceller
    events: EventLog


def _seconds(request: Any, name: str, violations: list[FieldViolation]) -> float | None:
    if not request.HasField(name):
        return None
    seconds = float(getattr(request, name).ToNanoseconds()) / 1e9
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        violations.append(FieldViolation(name, f"must be positive and at most {MAX_TIMEOUT_SECONDS} s", "OUT_OF_RANGE"))
    return seconds


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def submission_from_request(tenant: str, request: workflow_service_pb2.SubmitExecutionRequest) -> Submission:
    """Checks every field of SubmitExecution (all problems at once, as field violations) and builds the domain
    request; the graph itself is validated against the catalog by the submitter."""
    graph = graph_from_request(request)
    violations: list[FieldViolation] = []
    if not PRIORITY_RANGE[0] <= request.priority <= PRIORITY_RANGE[1]:
        violations.append(FieldViolation("priority", f"must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}",
                                         "OUT_OF_RANGE"))
    if request.request_id:
        try:
            uuid.UUID(request.request_id)
        except ValueError:
            violations.append(FieldViolation("request_id", "must be a UUID (version 4 recommended)", "INVALID_UUID"))
    if request.webhook_url and (not _http_url(request.webhook_url) or len(request.webhook_url) > 2048):
        violations.append(FieldViolation("webhook_url", "must be an http(s) URL of at most 2048 characters",
                                         "INVALID_URL"))
    if len(request.labels) > MAX_LABELS:
        violations.append(FieldViolation("labels", f"at most {MAX_LABELS} labels", "TOO_MANY"))
    for key, value in request.labels.items():
        if not LABEL_PATTERN.match(key):
            violations.append(FieldViolation(f"labels[{key[:64]!r}]", "keys are 1-63 of a-z, 0-9, _ . - "
                                             "(starting and ending with a letter or digit)", "INVALID_LABEL"))
        if len(value) > MAX_LABEL_VALUE:
            violations.append(FieldViolation(f"labels[{key[:64]!r}]", f"values are at most {MAX_LABEL_VALUE} "
                                             "characters", "INVALID_LABEL"))
    if len(request.inputs) > MAX_INPUTS:
        violations.append(FieldViolation("inputs", f"at most {MAX_INPUTS} input files", "TOO_MANY"))
    inputs = []
    for index, item in enumerate(request.inputs):
        source = item.WhichOneof("source")
        if not item.name:
            violations.append(FieldViolation(f"inputs[{index}].name", "required", "REQUIRED"))
        if source is None:
            violations.append(FieldViolation(f"inputs[{index}]", "set one of data, object_key and url", "REQUIRED"))
        elif source == "url" and not _http_url(item.url):
            violations.append(FieldViolation(f"inputs[{index}].url", "must be an http(s) URL", "INVALID_URL"))
        inputs.append(InputRequest(name=item.name, data=item.data if source == "data" else None,
                                   object_key=item.object_key if source == "object_key" else "",
                                   url=item.url if source == "url" else "", content_type=item.content_type,
                                   sha256=item.sha256.lower()))
    queue_timeout = _seconds(request, "queue_timeout", violations)
    run_timeout = _seconds(request, "run_timeout", violations)
    if violations:
        raise invalid_argument("the submission has invalid fields", *violations)
    return Submission(tenant=tenant, graph=graph, priority=request.priority, request_id=request.request_id,
                      webhook_url=request.webhook_url, inputs=tuple(inputs), labels=dict(request.labels),
                      queue_timeout_seconds=queue_timeout, run_timeout_seconds=run_timeout)


def _filter_from_request(request: workflow_service_pb2.ListExecutionsRequest) -> ExecutionFilter:
    labels: list[tuple[str, str]] = []
    for index, selector in enumerate(request.label_selectors):
        key, sep, value = selector.partition("=")
        if not sep or not key:
            raise invalid_argument("label selectors are written key=value",
                                   FieldViolation(f"label_selectors[{index}]", f"{selector!r} is not key=value"))
        labels.append((key, value))
    states = []
    for index, state in enumerate(request.states):
        if state == 0:
            raise invalid_argument("EXECUTION_STATE_UNSPECIFIED is not a state",
                                   FieldViolation(f"states[{index}]", "unspecified"))
        try:
            states.append(state_from_proto(state))
        except ValueError:
            raise invalid_argument("unknown execution state", FieldViolation(f"states[{index}]", str(state))) from None
    return ExecutionFilter(
        states=tuple(states),
        create_time_start=request.create_time_start.ToDatetime(tzinfo=UTC)
        if request.HasField("create_time_start") else None,
        create_time_end=request.create_time_end.ToDatetime(tzinfo=UTC)
        if request.HasField("create_time_end") else None,
        labels=tuple(labels),
    )


class WorkflowServicer(workflow_service_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, queries: ExecutionQueries, catalog: ExecutorCatalog, *, store: ObjectStore | None = None,
                 settings: Settings | None = None, operations: ExecutionOperations | None = None) -> None:
        """`store`: the object store for inputs and outputs (None: file RPCs answer UNAVAILABLE, no output URLs)."""
        self._queries = queries
        self._catalog = catalog
        self._files = WorkflowFiles(store, settings or Settings())
        self._operations = operations

    async def _visible_catalog(self, tenant: str) -> list[catalog_pb2.NodeDefinition]:
        """The fleet's catalog, with the caller's uploaded models among the loaders' choices."""
        definitions = await self._catalog.definitions()
        models = await self._operations.submitter.uploaded_models(tenant) if self._operations is not None else None
        return with_uploaded_models(definitions, models) if models else definitions

    def _ops(self, method: str) -> ExecutionOperations:
        if self._operations is None:
            raise not_implemented(method)
        return self._operations

    @staticmethod
    def _with_position(message: execution_pb2.Execution, position: int) -> execution_pb2.Execution:
        if message.state == execution_event_pb2.EXECUTION_STATE_QUEUED:
            message.queue_position = position
        return message

    async def SubmitExecution(self, request: workflow_service_pb2.SubmitExecutionRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> execution_pb2.Execution:
        ops = self._ops("SubmitExecution")
        record, position = await ops.submitter.submit(submission_from_request(caller_tenant(context), request))
        message = execution_to_proto(record)
        message.last_event_id = await ops.events.last_event_id(record.id)
        return self._with_position(message, position)

    async def CancelExecution(self, request: workflow_service_pb2.CancelExecutionRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> execution_pb2.Execution:
        ops = self._ops("CancelExecution")
        check_execution_id(request.id)
        record = await ops.canceller.cancel(caller_tenant(context), request.id, request.reason)
        message = execution_to_proto(record)
        message.last_event_id = await ops.events.last_event_id(record.id) or record.last_event_id
        return message

    async def WatchExecution(self, request: workflow_service_pb2.WatchExecutionRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> AsyncIterator[execution_event_pb2.ExecutionEvent]:
        ops = self._ops("WatchExecution")
        check_execution_id(request.id)
        async for event in ops.watcher.watch(caller_tenant(context), request.id, request.after_event_id,
                                             include_previews=request.include_previews):
            yield event

    async def ValidateWorkflow(self, request: workflow_service_pb2.ValidateWorkflowRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> workflow_service_pb2.ValidateWorkflowResponse:
        # A malformed encoding is INVALID_ARGUMENT; an invalid graph is a result (valid=false), not an error.
        plain = graph_from_request(request)
        graph, result = await (self._operations.submitter.validate(plain, caller_tenant(context))
                               if self._operations is not None
                               else validate_graph(plain, self._catalog))
        response = workflow_service_pb2.ValidateWorkflowResponse(result=validation_to_proto(result))
        try:
            response.graph.CopyFrom(graph_to_proto(graph))
        except ServiceError:
            # A value the typed graph cannot carry (an integer beyond 64 bits): in an invalid graph the result
            # already says what is wrong, so the graph is left out; in a valid one it is the caller's error.
            if result.valid:
                raise
        return response

    async def UploadInput(self, request: workflow_service_pb2.UploadInputRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> workflow_service_pb2.UploadInputResponse:
        stored = await self._files.upload_input(caller_tenant(context), request.filename, request.data,
                                                request.content_type)
        return workflow_service_pb2.UploadInputResponse(object_key=stored.object_key, sha256=stored.sha256,
                                                        size_bytes=stored.size)

    async def DownloadOutput(self, request: workflow_service_pb2.DownloadOutputRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[httpbody_pb2.HttpBody]:
        check_execution_id(request.id)
        if not request.filename:
            raise invalid_argument("filename is required", FieldViolation("filename", "missing", "REQUIRED"))
        record = await self._queries.get(caller_tenant(context), request.id)
        download = await self._files.open_output(record, request.filename)
        try:
            first = True
            async for chunk in download.chunks():
                # The first message carries the media type (the gateway's Content-Type), the others only bytes.
                yield httpbody_pb2.HttpBody(content_type=download.content_type, data=chunk) if first \
                    else httpbody_pb2.HttpBody(data=chunk)
                first = False
        finally:
            await download.aclose()

    async def ListNodes(self, request: workflow_service_pb2.ListNodesRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> workflow_service_pb2.ListNodesResponse:
        visible = await self._visible_catalog(caller_tenant(context))
        definitions = [d for d in visible if d.category.startswith(request.category)]
        start = 0
        if request.page_token:
            start = next((i for i, d in enumerate(definitions) if d.name > request.page_token), len(definitions))
        size = len(definitions) if request.page_size == 0 else NODE_PAGE_SIZE.resolve(request.page_size)
        page = definitions[start:start + size]
        more = start + size < len(definitions)
        # The token is the last name served: names are public, so an opaque token would hide nothing.
        return workflow_service_pb2.ListNodesResponse(nodes=page, next_page_token=page[-1].name if more else "")

    async def GetObjectInfo(self, request: workflow_service_pb2.GetObjectInfoRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> httpbody_pb2.HttpBody:
        catalog = {d.name: object_info_from_definition(d) for d in await self._visible_catalog(caller_tenant(context))}
        return httpbody_pb2.HttpBody(content_type="application/json",
                                     data=json.dumps(catalog, separators=(",", ":")).encode())

    async def GetExecution(self, request: workflow_service_pb2.GetExecutionRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> execution_pb2.Execution:
        record = await self._queries.get(caller_tenant(context), request.id)
        message = execution_to_proto(record)
        add_output_urls(message, await self._files.presigned_urls(record))
        if self._operations is not None:
            message.last_event_id = await self._operations.events.last_event_id(record.id) or record.last_event_id
            if record.state.value == "QUEUED":
                message.queue_position = await self._operations.submitter.position(record)
        return message

    async def ListExecutions(self, request: workflow_service_pb2.ListExecutionsRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> workflow_service_pb2.ListExecutionsResponse:
        records, token = await self._queries.list(caller_tenant(context), _filter_from_request(request),
                                                  request.page_size, request.page_token)
        return workflow_service_pb2.ListExecutionsResponse(
            executions=[execution_to_proto(r, include_graph=False) for r in records], next_page_token=token)
