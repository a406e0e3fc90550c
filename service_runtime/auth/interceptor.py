"""The authenticating interceptor: every RPC but health and reflection needs a credential and its scope.

For each call: read `authorization: Bearer <API key | token | internal credential>` (gRPC metadata; Envoy forwards
the HTTP header of REST calls), verify it (verifier.py), admit it through the principal's token bucket and the
revoked-keys list in one Redis round trip (ratelimit.py), check the scope the RPC requires (scopes.py), and bind
the caller for the handler (`service_runtime.grpc.identity`). Refusals:

- no, malformed, unknown, revoked or expired credential → UNAUTHENTICATED (HTTP 401 through Envoy);
- a scope the credential lacks → PERMISSION_DENIED (HTTP 403);
- an empty bucket → RESOURCE_EXHAUSTED, reason RATE_LIMITED, with google.rpc.RetryInfo and a `retry-after`
  trailer (seconds), which Envoy's transcoder passes to REST callers as the `Retry-After` header of the 429.

It sits after RequestContext (so refusals are logged and counted with their reason) and before ErrorMapping, so it
answers with its own typed status.
"""

from __future__ import annotations

import logging
import math
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import redis.asyncio as redis
from grpc_interceptor import AsyncServerInterceptor

from service_runtime.auth.credentials import bearer_from_metadata, internal_credential
from service_runtime.auth.ratelimit import DEFAULT_NAMESPACE, RateLimiter
from service_runtime.auth.scopes import AUTHENTICATED, INTERNAL, OPEN, required_scope
from service_runtime.auth.store import CredentialStore
from service_runtime.auth.tiers import TierTable
from service_runtime.auth.verifier import CredentialVerifier
from service_runtime.db import Database
from service_runtime.errors import (
    Reason,
    ServiceError,
    permission_denied,
    resource_exhausted,
    unauthenticated,
    unavailable,
)
from service_runtime.errors.status import to_grpc_status
from service_runtime.grpc.identity import Caller, bind_caller
from service_runtime.settings import Settings
from service_runtime.telemetry.context import error_reason_var

log = logging.getLogger(__name__)

#: Metadata with which the platform's components (internal credential only) act for a tenant.
TENANT_METADATA = "x-comfymesh-tenant"
#: The trailer carrying a refusal's retry delay in whole seconds (Envoy: the REST response's Retry-After).
RETRY_AFTER_METADATA = "retry-after"
MISSING_CREDENTIALS = "missing credentials: send 'authorization: Bearer <API key or token>'"


class _Status(namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


def status_of(error: ServiceError) -> grpc.Status:
    """The rich status of an error, plus a `retry-after` trailer when it carries a retry delay."""
    status = to_grpc_status(error)
    if error.retry_after_seconds is None:
        return status
    seconds = str(max(1, math.ceil(error.retry_after_seconds)))
    return _Status(status.code, status.details,  # type: ignore[attr-defined]
                   (*status.trailing_metadata, (RETRY_AFTER_METADATA, seconds)))  # type: ignore[attr-defined]


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    """Ends the call with `error` as a typed status (what ErrorMapping does for handlers, with `retry-after`)."""
    error_reason_var.set(str(error.reason))
    context.set_code(error.code)
    await context.abort_with_status(status_of(error))


def _is_stream(value: Any) -> bool:
    return hasattr(value, "__aiter__")


class AuthInterceptor(AsyncServerInterceptor):
    def __init__(self, verifier: CredentialVerifier, limiter: RateLimiter | None,
                 required: Callable[[str], str] = required_scope) -> None:
        self.verifier = verifier
        self.limiter = limiter
        self._required = required

    async def intercept(self, method: Callable[..., Any], request_or_iterator: Any,
                        context: grpc.aio.ServicerContext[Any, Any], method_name: str) -> Any:
        scope = self._required(method_name)
        if scope != OPEN:
            try:
                caller = await self.authorize(context.invocation_metadata(), method_name, scope)
            except ServiceError as error:
                await abort_with(context, error)
                raise  # not reached: abort raises
            except Exception:  # e.g. the database is down: a typed status, never an opaque UNKNOWN
                log.exception("authentication failed unexpectedly for %s", method_name)
                await abort_with(context, unavailable("authentication is unavailable; retry shortly"))
                raise
            bind_caller(caller)
        response = method(request_or_iterator, context)
        if _is_stream(response):
            return response
        return await response

    async def authorize(self, metadata: Any, method_name: str, scope: str) -> Caller:
        """The caller of a call with `metadata` to `method_name`, admitted; a ServiceError when refused."""
        bearer = bearer_from_metadata(metadata)
        if bearer is None:
            raise unauthenticated(MISSING_CREDENTIALS)
        acting = next((str(v) for k, v in (metadata or ()) if k == TENANT_METADATA), "")
        caller = await self.verifier.authenticate(bearer, acting_tenant=acting)
        if self.limiter is not None:
            admission = await self.limiter.admit(caller.principal_id, caller.requests_per_second, caller.burst,
                                                 caller.key_id)
            if admission.revoked:
                what = "API key" if caller.credential_type == "api_key" else "API key this token was issued for"
                raise unauthenticated(f"the {what} has been revoked", key_id=caller.key_id)
            if not admission.allowed:
                raise resource_exhausted(
                    f"rate limit of {caller.requests_per_second:g} requests per second exceeded; retry in "
                    f"{admission.retry_after_seconds:.3g}s", Reason.RATE_LIMITED,
                    retry_after_seconds=admission.retry_after_seconds, principal_id=caller.principal_id,
                    tier=caller.tier)
        method = method_name.rsplit("/", 1)[-1]
        if scope == INTERNAL:
            if caller.credential_type != "internal":
                raise permission_denied(f"{method} is internal to the platform", method=method_name)
        elif scope != AUTHENTICATED and not caller.has(scope):
            raise permission_denied(f"{method} requires the scope {scope}", method=method_name, scope=scope)
        return caller


def build_verifier(settings: Settings, db: Database | None) -> CredentialVerifier:
    return CredentialVerifier(
        CredentialStore(db) if db is not None else None, TierTable.from_settings(settings),
        internal_credential=internal_credential(settings), key_cache_seconds=settings.auth_key_cache_seconds,
        last_used_interval_seconds=settings.auth_key_last_used_interval_seconds,
        signing_keys_refresh_seconds=settings.auth_signing_keys_refresh_seconds)


def auth_interceptor(settings: Settings, redis_client: redis.Redis | None, db: Database | None, *,
                     namespace: str = DEFAULT_NAMESPACE) -> AuthInterceptor | None:
    """The interceptor for a server's chain, or None when `settings.auth_enabled` is off.

    `db`: the shared database with the identity tables (None: only the internal credential is accepted, e.g. on a
    GPU executor); `redis_client`: rate limits and the revoked-keys list (None: neither).
    """
    if not settings.auth_enabled:
        return None
    limiter = RateLimiter(redis_client, namespace) if redis_client is not None else None
    return AuthInterceptor(build_verifier(settings, db), limiter)
