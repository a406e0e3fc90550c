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
from services.execution.component import build_execution_binding
from services.execution_store.cancellation import CancelFlags
from services.execution_store.events import EventFollower
from services.execution_store.repository import ExecutionRepository
from services.execution_store.tails import SharedTails
from services.execution_store.wiring import event_log, lifecycle
from services.queue.component import build_queue_binding
from services.workflow.cancellation import ExecutionCanceller
from services.workflow.catalog import ExecutorCatalog
from services.workflow.files import WorkflowFiles
from services.workflow.queries import ExecutionQueries
from services.workflow.submission import ExecutionSubmitter
from services.workflow.transport import ExecutionOperations, WorkflowServicer
from services.workflow.watch import ExecutionWatcher


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
    settings = ctx.settings
    repository = ExecutionRepository(ctx.db)
    queries = ExecutionQueries(repository, ctx.page_tokens)
    catalog = ExecutorCatalog(lambda: channel_to("execution", settings))
    ctx.on_close(catalog.close)
    queue_channel = channel_to("queue", settings)
    execution_channel = channel_to("execution", settings)
    ctx.on_close(queue_channel.close)
    ctx.on_close(execution_channel.close)
    # Without COMFYMESH_S3_ENDPOINT there is no object store: file RPCs answer UNAVAILABLE, outputs carry no URLs.
    store = ctx.object_store if settings.s3_endpoint else None
    files = WorkflowFiles(store, settings)
    events = event_log(ctx)
    states = lifecycle(ctx)
    follower = EventFollower(ctx.redis, events.notify_channel)
    ctx.on_close(follower.close)
    queue = queue_service_pb2_grpc.QueueServiceStub(queue_channel)
    operations = ExecutionOperations(
        submitter=ExecutionSubmitter(repository, states, queue, catalog, files),
        watcher=ExecutionWatcher(queries, repository, events, SharedTails(events, follower),
                                 settings.watch_heartbeat_seconds),
        canceller=ExecutionCanceller(queries, repository, states, CancelFlags(ctx.redis), queue,
                                     execution_service_pb2_grpc.ExecutionServiceStub(execution_channel), follower),
        events=events)
    servicer = WorkflowServicer(queries, catalog, store=store, settings=settings, operations=operations)
    return ServiceBinding(WORKFLOW, servicer, workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server)


# The services below serve the contract with every RPC answering UNIMPLEMENTED (reason NOT_IMPLEMENTED) until their
# issues implement them; they already take part in health, reflection, routing and metrics.
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
    "queue": build_queue_binding,
    "execution": build_execution_binding,
    "model": _model,
    "auth": _auth,
    "webhook": _webhook,
}
