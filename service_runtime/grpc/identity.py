"""Who is calling: the authenticated caller of the current RPC, and the tenant every read and write is scoped to.

The auth interceptor (service_runtime/auth/interceptor.py) verifies the `authorization` metadata and binds the
caller here for the RPC's task; servicers ask `caller_tenant(context)` (and, for finer checks, `current_caller()`).
Where no interceptor bound a caller (authentication switched off, or a server built without it) every caller
belongs to the tenant "default".
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a principal of a tenant, with the scopes its credential grants."""

    principal_id: str
    tenant: str
    scopes: frozenset[str]
    credential_type: str  # "api_key", "token" or "internal"
    key_id: str = ""  # the API key it authenticated with (or the key its token was exchanged for)
    service_account: bool = False
    tier: str = ""
    # Its token bucket: requests per second and burst (0 = unlimited).
    requests_per_second: float = 0.0
    burst: int = 0
    roles: tuple[str, ...] = field(default=())

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def has_all(self, scopes: Iterable[str]) -> bool:
        return set(scopes) <= self.scopes


_caller: ContextVar[Caller | None] = ContextVar("comfymesh_caller", default=None)


def bind_caller(caller: Caller | None) -> Token[Caller | None]:
    """Binds the caller of the current RPC (the auth interceptor does this once per call)."""
    return _caller.set(caller)


def reset_caller(token: Token[Caller | None]) -> None:
    _caller.reset(token)


def current_caller() -> Caller | None:
    """The authenticated caller of the current RPC, or None where no auth interceptor ran."""
    return _caller.get()


def caller_tenant(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The tenant the current RPC acts in: the authenticated caller's, else "default" (authentication off)."""
    caller = _caller.get()
    return caller.tenant if caller is not None else DEFAULT_TENANT
