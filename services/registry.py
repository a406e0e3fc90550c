"""The control-plane components: which gRPC services each serves and how to build them."""

from __future__ import annotations

from collections.abc import Callable

from comfymesh.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from comfymesh.model.v1 import model_service_pb2, model_service_pb2_grpc
from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from comfymesh.webhook.v1 import webhook_service_pb2, webhook_service_pb2_grpc
from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from service_runtime.grpc import ServiceBinding, channel_to
from service_runtime.grpc.contract import contract_only
from services.context import AppContext
from services.execution_store.repository import ExecutionRepository
from services.workflow.catalog import ExecutorCatalog
from services.workflow.queries import ExecutionQueries
from services.workflow.transport import WorkflowServicer


def _name(module: object, service: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[service].full_name)  # type: ignore[attr-defined]


WORKFLOW = _name(workflow_service_pb2, "WorkflowService")
QUEUE = _name(queue_service_pb2, "QueueService")
EXECUTION = _name(execution_service_pb2, "ExecutionService")
MODEL = _name(model_service_pb2, "ModelService")
AUTH = _name(auth_service_pb2, "AuthService")
WEBHOOK = _name(webhook_service_pb2, "WebhookService")
# Every service the gateway exposes (GpuExecutorService is internal and never routed).
PUBLIC_SERVICES = (WORKFLOW, QUEUE, EXECUTION, MODEL, AUTH, WEBHOOK)


def _workflow(ctx: AppContext) -> ServiceBinding:
    queries = ExecutionQueries(ExecutionRepository(ctx.db), ctx.page_tokens)
    catalog = ExecutorCatalog(lambda: channel_to("executor", ctx.settings))
    ctx.on_close(catalog.close)
    # WorkflowServicer implements Get/List executions and the node catalog so far; its other RPCs answer UNIMPLEMENTED.
    return ServiceBinding(WORKFLOW, WorkflowServicer(queries, catalog),  # type: ignore[abstract]
                          workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server)


# The services below serve the contract with every RPC answering UNIMPLEMENTED (reason NOT_IMPLEMENTED) until their
# issues implement them; they already take part in health, reflection, routing and metrics.
def _queue(ctx: AppContext) -> ServiceBinding:
    return ServiceBinding(QUEUE, contract_only(queue_service_pb2_grpc.QueueServiceServicer),
                          queue_service_pb2_grpc.add_QueueServiceServicer_to_server)


def _execution(ctx: AppContext) -> ServiceBinding:
    return ServiceBinding(EXECUTION, contract_only(execution_service_pb2_grpc.ExecutionServiceServicer),
                          execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server)


def _model(ctx: AppContext) -> ServiceBinding:
    return ServiceBinding(MODEL, contract_only(model_service_pb2_grpc.ModelServiceServicer),
                          model_service_pb2_grpc.add_ModelServiceServicer_to_server)


def _auth(ctx: AppContext) -> ServiceBinding:
    return ServiceBinding(AUTH, contract_only(auth_service_pb2_grpc.AuthServiceServicer),
                          auth_service_pb2_grpc.add_AuthServiceServicer_to_server)


def _webhook(ctx: AppContext) -> ServiceBinding:
    return ServiceBinding(WEBHOOK, contract_only(webhook_service_pb2_grpc.WebhookServiceServicer),
                          webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server)


COMPONENTS: dict[str, Callable[[AppContext], ServiceBinding]] = {
    "workflow": _workflow,
    "queue": _queue,
    "execution": _execution,
    "model": _model,
    "auth": _auth,
    "webhook": _webhook,
}
