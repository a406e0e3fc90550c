"""WorkflowService over gRPC: request validation and proto ⇄ domain conversion around the domain services.

RPCs not listed here are inherited from the generated servicer and answer UNIMPLEMENTED with the typed reason
NOT_IMPLEMENTED until the control-plane issue implements them.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import grpc.aio
from google.api import httpbody_pb2

from comfymesh.workflow.v1 import execution_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from service_runtime.errors import FieldViolation, invalid_argument
from service_runtime.grpc.identity import caller_tenant
from service_runtime.pagination import PageSize
from service_runtime.transport.catalog_codec import object_info_from_definition
from services.execution_store.domain import ExecutionFilter
from services.workflow.catalog import ExecutorCatalog
from services.workflow.convert import execution_to_proto, state_from_proto
from services.workflow.queries import ExecutionQueries

NODE_PAGE_SIZE = PageSize(default=100, maximum=1000)


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
    def __init__(self, queries: ExecutionQueries, catalog: ExecutorCatalog) -> None:
        self._queries = queries
        self._catalog = catalog

    async def ListNodes(self, request: workflow_service_pb2.ListNodesRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> workflow_service_pb2.ListNodesResponse:
        definitions = [d for d in await self._catalog.definitions() if d.category.startswith(request.category)]
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
        catalog = {d.name: object_info_from_definition(d) for d in await self._catalog.definitions()}
        return httpbody_pb2.HttpBody(content_type="application/json",
                                     data=json.dumps(catalog, separators=(",", ":")).encode())

    async def GetExecution(self, request: workflow_service_pb2.GetExecutionRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> execution_pb2.Execution:
        record = await self._queries.get(caller_tenant(context), request.id)
        return execution_to_proto(record)

    async def ListExecutions(self, request: workflow_service_pb2.ListExecutionsRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> workflow_service_pb2.ListExecutionsResponse:
        records, token = await self._queries.list(caller_tenant(context), _filter_from_request(request),
                                                  request.page_size, request.page_token)
        return workflow_service_pb2.ListExecutionsResponse(
            executions=[execution_to_proto(r, include_graph=False) for r in records], next_page_token=token)
