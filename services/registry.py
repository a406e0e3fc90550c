"""The control-plane components: which gRPC services each serves and how to build them."""

from __future__ import annotations

from collections.abc import Callable

from comfymesh.auth.v1 import auth_service_pb2
from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from comfymesh.model.v1 import model_service_pb2
from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from comfymesh.webhook.v1 import webhook_service_pb2
from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from service_runtime.auth.quotas import SubmissionQuotas
from service_runtime.grpc import ServiceBinding, channel_to
from services.auth.component import build_auth_binding
from services.context import AppContext
from services.execution.component import build_execution_binding
from services.execution_store.cancellation import CancelFlags
from services.execution_store.events import EventFollower
from services.execution_store.repository import ExecutionRepository
from services.execution_store.tails import SharedTails
from services.execution_store.wiring import event_log, lifecycle
from services.model.client import ModelCatalog
from services.model.component import build_model_binding
from services.queue.component import build_queue_binding
from services.webhook.component import build_webhook_binding
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
    models = ModelCatalog(lambda: channel_to("model", settings))
    ctx.on_close(models.close)
    operations = ExecutionOperations(
        submitter=ExecutionSubmitter(repository, states, queue, catalog, files, models,
                                     quotas=SubmissionQuotas.from_settings(settings, ctx.db, repository)),
        watcher=ExecutionWatcher(queries, repository, events, SharedTails(events, follower),
                                 settings.watch_heartbeat_seconds),
        canceller=ExecutionCanceller(queries, repository, states, CancelFlags(ctx.redis), queue,
                                     execution_service_pb2_grpc.ExecutionServiceStub(execution_channel), follower),
        events=events)
    servicer = WorkflowServicer(queries, catalog, store=store, settings=settings, operations=operations)
    return ServiceBinding(WORKFLOW, servicer, workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server)


def _model(ctx: AppContext) -> ServiceBinding:
    return build_model_binding(ctx)


def _auth(ctx: AppContext) -> ServiceBinding:
    # Tenants, principals, API keys, tokens and usage (services/auth), with the signing-key upkeep loop.
    return build_auth_binding(ctx)


def _webhook(ctx: AppContext) -> ServiceBinding:
    # Subscriptions, signed deliveries with retries and a dead-letter state, the delivery log (services/webhook).
    return build_webhook_binding(ctx)


COMPONENTS: dict[str, Callable[[AppContext], ServiceBinding]] = {
    "workflow": _workflow,
    "queue": build_queue_binding,
    "execution": build_execution_binding,
    "model": _model,
    "auth": _auth,
    "webhook": _webhook,
}
