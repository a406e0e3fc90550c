"""Who may call what: scopes, the roles that grant them, and the one table of the scope every RPC requires.

Every RPC of every ComfyMesh service has exactly one entry in `METHOD_SCOPES` (tests/unit/test_auth_scopes.py walks
the descriptor set and fails on an RPC without one); an RPC missing from the table is closed to everyone but the
platform's own components (`required_scope` answers `INTERNAL`). Health and reflection are open.

Three kinds of scope:
- tenant scopes (`executions.read`, `models.write`, ...) act inside the caller's tenant;
- platform scopes (`fleet.*`, `queue.*`, `tenants.admin`) act on what all tenants share (the fleet, the queue,
  the tenant list): roles grant them only to principals of the platform's own tenant (`SYSTEM_TENANT`);
- internal scopes (`fleet.register`, `queue.internal`, `executor.run`) are held only by the platform's components
  (the internal credential) and, for `fleet.register`, by executor service accounts.

`AUTHENTICATED` is not a scope but "any authenticated caller" (WhoAmI, CreateToken, ListSigningKeys); finer checks
(own key or an admin's, own tenant or a platform admin's) are the servicer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

#: The tenant that runs the platform: its admins administer tenants, its operators the fleet and the queue.
SYSTEM_TENANT = "default"

# --- tenant scopes ---
EXECUTIONS_READ = "executions.read"
EXECUTIONS_WRITE = "executions.write"
MODELS_READ = "models.read"
MODELS_WRITE = "models.write"
WEBHOOKS_READ = "webhooks.read"
WEBHOOKS_WRITE = "webhooks.write"
TENANT_READ = "tenant.read"  # the caller's tenant and its usage
KEYS_READ = "keys.read"  # the caller's own API keys
KEYS_WRITE = "keys.write"  # create and revoke the caller's own API keys
AUTH_ADMIN = "auth.admin"  # principals of the tenant and everybody's keys in it
# --- platform scopes (principals of SYSTEM_TENANT only) ---
FLEET_READ = "fleet.read"
FLEET_WRITE = "fleet.write"
QUEUE_READ = "queue.read"
QUEUE_ADMIN = "queue.admin"
TENANTS_ADMIN = "tenants.admin"
# --- internal scopes (the platform's own components; fleet.register also executor service accounts) ---
FLEET_REGISTER = "fleet.register"
QUEUE_INTERNAL = "queue.internal"
EXECUTOR_RUN = "executor.run"

#: Pseudo-scopes of the table: no credential needed / any authenticated caller / only the internal credential.
OPEN = "open"
AUTHENTICATED = "authenticated"
INTERNAL = "internal"

TENANT_SCOPES = frozenset({EXECUTIONS_READ, EXECUTIONS_WRITE, MODELS_READ, MODELS_WRITE, WEBHOOKS_READ,
                           WEBHOOKS_WRITE, TENANT_READ, KEYS_READ, KEYS_WRITE, AUTH_ADMIN})
PLATFORM_SCOPES = frozenset({FLEET_READ, FLEET_WRITE, QUEUE_READ, QUEUE_ADMIN, TENANTS_ADMIN})
INTERNAL_SCOPES = frozenset({FLEET_REGISTER, QUEUE_INTERNAL, EXECUTOR_RUN})
ALL_SCOPES = TENANT_SCOPES | PLATFORM_SCOPES | INTERNAL_SCOPES


class Role(StrEnum):
    """`comfymesh.auth.v1.Role` without the `ROLE_` prefix."""

    ADMIN = "ADMIN"
    OPERATOR = "OPERATOR"
    DEVELOPER = "DEVELOPER"
    VIEWER = "VIEWER"
    EXECUTOR = "EXECUTOR"

    @property
    def service_accounts_only(self) -> bool:
        return self is Role.EXECUTOR

    @property
    def system_tenant_only(self) -> bool:
        return self is Role.EXECUTOR


_VIEWER = frozenset({EXECUTIONS_READ, MODELS_READ, WEBHOOKS_READ, TENANT_READ, KEYS_READ})
_DEVELOPER = _VIEWER | {EXECUTIONS_WRITE, MODELS_WRITE, WEBHOOKS_WRITE, KEYS_WRITE}
_OPERATOR = _DEVELOPER | {FLEET_READ, FLEET_WRITE, QUEUE_READ, QUEUE_ADMIN}
_ADMIN = _OPERATOR | {AUTH_ADMIN, TENANTS_ADMIN}

ROLE_SCOPES: Mapping[Role, frozenset[str]] = MappingProxyType({
    Role.VIEWER: _VIEWER,
    Role.DEVELOPER: _DEVELOPER,
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: _ADMIN,
    Role.EXECUTOR: frozenset({FLEET_REGISTER}),
})


def scopes_of_roles(roles: Iterable[Role], tenant: str) -> frozenset[str]:
    """What a principal of `tenant` holding `roles` may do: platform scopes only in the system tenant."""
    granted: set[str] = set()
    for role in roles:
        if role.system_tenant_only and tenant != SYSTEM_TENANT:
            continue
        granted |= ROLE_SCOPES[role]
    if tenant != SYSTEM_TENANT:
        granted -= PLATFORM_SCOPES
    return frozenset(granted)


_WORKFLOW = "/comfymesh.workflow.v1.WorkflowService/"
_QUEUE = "/comfymesh.queue.v1.QueueService/"
_EXECUTION = "/comfymesh.execution.v1.ExecutionService/"
_MODEL = "/comfymesh.model.v1.ModelService/"
_AUTH = "/comfymesh.auth.v1.AuthService/"
_WEBHOOK = "/comfymesh.webhook.v1.WebhookService/"
_EXECUTOR = "/comfymesh.executor.v1.GpuExecutorService/"

#: gRPC method path ("/package.Service/Method") → the scope it requires.
METHOD_SCOPES: Mapping[str, str] = MappingProxyType({
    # WorkflowService: the tenant's executions.
    _WORKFLOW + "ValidateWorkflow": EXECUTIONS_READ,
    _WORKFLOW + "SubmitExecution": EXECUTIONS_WRITE,
    _WORKFLOW + "GetExecution": EXECUTIONS_READ,
    _WORKFLOW + "ListExecutions": EXECUTIONS_READ,
    _WORKFLOW + "CancelExecution": EXECUTIONS_WRITE,
    _WORKFLOW + "WatchExecution": EXECUTIONS_READ,
    _WORKFLOW + "DownloadOutput": EXECUTIONS_READ,
    _WORKFLOW + "UploadInput": EXECUTIONS_WRITE,
    _WORKFLOW + "ListNodes": EXECUTIONS_READ,
    _WORKFLOW + "GetObjectInfo": EXECUTIONS_READ,
    # QueueService: the shared queue. Enqueue/lease/renew/complete are the control plane's own calls.
    _QUEUE + "EnqueueJob": QUEUE_INTERNAL,
    _QUEUE + "LeaseJob": QUEUE_INTERNAL,
    _QUEUE + "RenewLease": QUEUE_INTERNAL,
    _QUEUE + "CompleteJob": QUEUE_INTERNAL,
    _QUEUE + "GetJob": QUEUE_READ,
    _QUEUE + "RemoveJob": QUEUE_ADMIN,
    _QUEUE + "ListQueuedJobs": QUEUE_READ,
    _QUEUE + "UpdateJobPriority": QUEUE_ADMIN,
    _QUEUE + "GetQueueStats": QUEUE_READ,
    _QUEUE + "PauseQueue": QUEUE_ADMIN,
    _QUEUE + "ResumeQueue": QUEUE_ADMIN,
    _QUEUE + "ListDeadLetters": QUEUE_READ,
    # ExecutionService: the fleet. Registration is the executors' own.
    _EXECUTION + "RegisterExecutor": FLEET_REGISTER,
    _EXECUTION + "Heartbeat": FLEET_REGISTER,
    _EXECUTION + "DeregisterExecutor": FLEET_REGISTER,
    _EXECUTION + "GetFleetCatalog": FLEET_READ,
    _EXECUTION + "GetExecutor": FLEET_READ,
    _EXECUTION + "ListExecutors": FLEET_READ,
    _EXECUTION + "InterruptExecution": FLEET_WRITE,
    _EXECUTION + "GetScalingDecision": FLEET_READ,
    # ModelService: the tenant's models.
    _MODEL + "UploadModel": MODELS_WRITE,
    _MODEL + "CreateModelUpload": MODELS_WRITE,
    _MODEL + "GetModelUpload": MODELS_WRITE,
    _MODEL + "DeleteModelUpload": MODELS_WRITE,
    _MODEL + "CompleteModelUpload": MODELS_WRITE,
    _MODEL + "ImportModel": MODELS_WRITE,
    _MODEL + "GetModel": MODELS_READ,
    _MODEL + "ListModels": MODELS_READ,
    _MODEL + "DeleteModel": MODELS_WRITE,
    _MODEL + "GetModelDownloadUrl": MODELS_READ,
    # AuthService.
    _AUTH + "WhoAmI": AUTHENTICATED,
    _AUTH + "CreateTenant": TENANTS_ADMIN,
    _AUTH + "GetTenant": TENANT_READ,
    _AUTH + "ListTenants": TENANTS_ADMIN,
    _AUTH + "CreatePrincipal": AUTH_ADMIN,
    _AUTH + "GetPrincipal": AUTH_ADMIN,
    _AUTH + "ListPrincipals": AUTH_ADMIN,
    _AUTH + "DeletePrincipal": AUTH_ADMIN,
    _AUTH + "CreateApiKey": KEYS_WRITE,
    _AUTH + "ListApiKeys": KEYS_READ,
    _AUTH + "RevokeApiKey": KEYS_WRITE,
    _AUTH + "CreateToken": AUTHENTICATED,
    _AUTH + "ListSigningKeys": AUTHENTICATED,
    _AUTH + "GetUsage": TENANT_READ,
    # WebhookService: the tenant's subscriptions and deliveries.
    _WEBHOOK + "CreateSubscription": WEBHOOKS_WRITE,
    _WEBHOOK + "GetSubscription": WEBHOOKS_READ,
    _WEBHOOK + "ListSubscriptions": WEBHOOKS_READ,
    _WEBHOOK + "UpdateSubscription": WEBHOOKS_WRITE,
    _WEBHOOK + "DeleteSubscription": WEBHOOKS_WRITE,
    _WEBHOOK + "RotateSubscriptionSecret": WEBHOOKS_WRITE,
    _WEBHOOK + "ListDeliveries": WEBHOOKS_READ,
    _WEBHOOK + "GetDelivery": WEBHOOKS_READ,
    _WEBHOOK + "RedeliverWebhook": WEBHOOKS_WRITE,
    _WEBHOOK + "GetWebhookSigningSecret": WEBHOOKS_READ,
    # GpuExecutorService: only the execution service's dispatcher calls executors.
    _EXECUTOR + "Execute": EXECUTOR_RUN,
    _EXECUTOR + "Interrupt": EXECUTOR_RUN,
    _EXECUTOR + "Describe": EXECUTOR_RUN,
    _EXECUTOR + "PrefetchModels": EXECUTOR_RUN,
})

#: Method prefixes anyone may call: probes (Kubernetes, Envoy) and grpcurl's discovery.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def required_scope(method: str) -> str:
    """The scope `method` ("/package.Service/Method") requires: a scope name, OPEN, AUTHENTICATED, or INTERNAL
    for a method the table does not know (closed by default)."""
    if method.startswith(OPEN_PREFIXES):
        return OPEN
    return METHOD_SCOPES.get(method, INTERNAL)


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    return sorted(set(scopes) - ALL_SCOPES)
