"""The auth component: AuthService plus its signing-key upkeep, built from the shared process context.

- "auth-signing-keys": keeps a fresh token-signing key (rotation; see signing.py).

Revocations are written to the database and to the principal's revoked list in Redis (`namespace`), which every
service's auth interceptor consults on each request (service_runtime/auth/ratelimit.py): both must use the same
namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from comfymesh.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from service_runtime.auth.quotas import SubmissionQuotas
from service_runtime.auth.ratelimit import DEFAULT_NAMESPACE, RateLimiter
from service_runtime.auth.store import CredentialStore
from service_runtime.auth.tiers import TierTable
from service_runtime.grpc import ServiceBinding
from service_runtime.secrets import deployment_secret
from service_runtime.settings import Settings
from services.auth.repository import AuthRepository
from services.auth.service import AuthConfig, AuthService
from services.auth.signing import SigningKeyRing
from services.auth.transport import AuthServicer
from services.context import AppContext
from services.execution_store.repository import ExecutionRepository

AUTH_SERVICE = str(auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)


@dataclass(frozen=True)
class AuthParts:
    repository: AuthRepository
    signing: SigningKeyRing
    service: AuthService
    servicer: AuthServicer


def signing_key_ring(settings: Settings, repository: AuthRepository) -> SigningKeyRing:
    return SigningKeyRing(repository, deployment_secret(settings),
                          rotation_seconds=settings.auth_signing_key_rotation_seconds,
                          max_token_ttl_seconds=settings.auth_token_max_ttl_seconds)


def build_auth(ctx: AppContext, *, namespace: str = DEFAULT_NAMESPACE,
               on_revoke: Callable[[str], None] | None = None) -> AuthParts:
    """The component's parts on `ctx.db` and `ctx.redis` (nothing started). `on_revoke(prefix)` tells this
    process's verifier to forget a revoked key at once."""
    settings = ctx.settings
    repository = AuthRepository(ctx.db)
    store = CredentialStore(ctx.db)
    signing = signing_key_ring(settings, repository)
    quotas = SubmissionQuotas(store, ExecutionRepository(ctx.db), TierTable.from_settings(settings))
    service = AuthService(repository, store, signing, quotas, ctx.page_tokens,
                          AuthConfig(token_ttl_seconds=settings.auth_token_ttl_seconds,
                                     token_max_ttl_seconds=settings.auth_token_max_ttl_seconds),
                          limiter=RateLimiter(ctx.redis, namespace), on_revoke=on_revoke)
    return AuthParts(repository, signing, service, AuthServicer(service))


def build_auth_binding(ctx: AppContext, *, namespace: str = DEFAULT_NAMESPACE,
                       on_revoke: Callable[[str], None] | None = None) -> ServiceBinding:
    """AuthService, with the signing-key upkeep registered as the background loop "auth-signing-keys"."""
    parts = build_auth(ctx, namespace=namespace, on_revoke=on_revoke)
    interval = max(1.0, min(3600.0, ctx.settings.auth_signing_key_rotation_seconds / 2))
    ctx.background("auth-signing-keys", lambda: parts.signing.maintain(interval))
    return ServiceBinding(AUTH_SERVICE, parts.servicer, auth_service_pb2_grpc.add_AuthServiceServicer_to_server)
