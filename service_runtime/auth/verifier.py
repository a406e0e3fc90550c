"""Turns a bearer credential into a `Caller`: API keys against the store, tokens locally, the internal credential.

API keys: the slow hash is checked once per key per process (the SHA-256 of keys that verified is remembered);
the key's state — revoked, expired, its owner disabled, its scopes — is re-read at most every `key_cache_seconds`
(1 s), so a revoked key stops working within that time even where Redis's revoked list is lost. Concurrent
lookups of one key share one database read and one slow hash. A wrong secret is remembered for a few seconds so
that repeating it does not cost a slow hash each time.

Tokens: verified with the signing public keys, read from the database every `signing_keys_refresh_seconds` and at
once (at most every second) when a token names a key not seen yet — a freshly rotated key verifies at once.

The internal credential: the platform's own components, with every scope, acting for the tenant they name in
`x-comfymesh-tenant` (default: the system tenant).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service_runtime.auth.credentials import (
    CredentialKind,
    api_key_prefix,
    fingerprint,
    kind_of,
    same_secret,
    verify_api_key,
)
from service_runtime.auth.scopes import ALL_SCOPES, SYSTEM_TENANT, scopes_of_roles
from service_runtime.auth.store import CredentialStore, KeyState, TenantInfo
from service_runtime.auth.tiers import Limits, TierTable
from service_runtime.auth.tokens import PublicSigningKey, TokenError, load_public_key, token_kid, verify_token
from service_runtime.errors import unauthenticated
from service_runtime.grpc.identity import Caller

log = logging.getLogger(__name__)

INTERNAL_PRINCIPAL = "internal"
_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BAD_KEY = "invalid API key"
_FAILED_TTL_SECONDS = 5.0
_TENANT_TTL_SECONDS = 10.0
_FORCED_REFRESH_SECONDS = 1.0

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)


class _SingleFlight(Generic[K, V]):
    """Concurrent calls for one key share one in-flight load."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                return await load()  # the leading call was: load on our own
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(value)
        return value


class CredentialVerifier:
    def __init__(self, store: CredentialStore | None, tiers: TierTable, *, internal_credential: str | None,
                 key_cache_seconds: float = 1.0, last_used_interval_seconds: float = 60.0,
                 signing_keys_refresh_seconds: float = 30.0, hash_concurrency: int = 4,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._tiers = tiers
        self._internal = internal_credential
        self._key_ttl = key_cache_seconds
        self._touch_interval = last_used_interval_seconds
        self._signing_ttl = signing_keys_refresh_seconds
        self._clock = clock
        self._hashing = asyncio.Semaphore(max(1, hash_concurrency))
        self._states: _Lru[str, tuple[KeyState | None, float]] = _Lru(10_000)
        self._verified: _Lru[str, tuple[str, str]] = _Lru(10_000)
        self._failed: _Lru[str, float] = _Lru(10_000)
        self._tenants: _Lru[str, tuple[TenantInfo | None, float]] = _Lru(10_000)
        self._touched: _Lru[str, float] = _Lru(10_000)
        self._key_loads: _SingleFlight[str, KeyState | None] = _SingleFlight()
        self._tenant_loads: _SingleFlight[str, TenantInfo | None] = _SingleFlight()
        self._signing_loads: _SingleFlight[str, None] = _SingleFlight()
        self._hash_checks: _SingleFlight[str, bool] = _SingleFlight()
        self._signing: dict[str, tuple[PublicSigningKey, Ed25519PublicKey]] = {}
        self._signing_loaded = -1e18
        self._signing_forced = -1e18
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, bearer: str, *, acting_tenant: str = "") -> Caller:
        """The caller a credential stands for; UNAUTHENTICATED (ServiceError) when it stands for nobody."""
        kind = kind_of(bearer)
        if kind is CredentialKind.INTERNAL:
            return self._internal_caller(bearer, acting_tenant)
        if self._store is None:
            raise unauthenticated("this service accepts only the platform's internal credential")
        if kind is CredentialKind.API_KEY:
            return await self._api_key_caller(bearer)
        if kind is CredentialKind.TOKEN:
            return await self._token_caller(bearer)
        raise unauthenticated("the credential is neither an API key nor a token")

    # --- internal ----------------------------------------------------------------------------------------------

    def _internal_caller(self, bearer: str, acting_tenant: str) -> Caller:
        if not self._internal or not same_secret(bearer, self._internal):
            raise unauthenticated("invalid internal credential")
        tenant = acting_tenant or SYSTEM_TENANT
        if not _TENANT_ID.match(tenant):
            raise unauthenticated("x-comfymesh-tenant is not a tenant id")
        return Caller(principal_id=INTERNAL_PRINCIPAL, tenant=tenant, scopes=ALL_SCOPES,
                      credential_type=str(CredentialKind.INTERNAL), service_account=True)

    # --- API keys ----------------------------------------------------------------------------------------------

    async def _api_key_caller(self, bearer: str) -> Caller:
        prefix = api_key_prefix(bearer)
        if prefix is None:
            raise unauthenticated("malformed API key")
        print_ = fingerprint(bearer)
        failed_until = self._failed.get(print_)
        if failed_until is not None and failed_until > time.monotonic():
            raise unauthenticated(_BAD_KEY)
        state = await self._key_state(prefix)
        if state is None:
            self._failed.put(print_, time.monotonic() + _FAILED_TTL_SECONDS)
            raise unauthenticated(_BAD_KEY)
        if self._verified.get(print_) != (state.key_id, state.secret_hash):
            secret_hash = state.secret_hash

            async def check() -> bool:
                async with self._hashing:
                    return await asyncio.to_thread(verify_api_key, bearer, secret_hash)

            matches = await self._hash_checks.run(f"{print_}:{secret_hash}", check)
            if not matches:
                self._failed.put(print_, time.monotonic() + _FAILED_TTL_SECONDS)
                raise unauthenticated(_BAD_KEY)
            self._verified.put(print_, (state.key_id, state.secret_hash))
        now = self._clock()
        if state.revoke_time is not None:
            raise unauthenticated("the API key has been revoked", key_id=state.key_id)
        if state.expire_time is not None and state.expire_time <= now:
            raise unauthenticated("the API key has expired", key_id=state.key_id)
        if state.principal_disabled:
            raise unauthenticated("the API key's principal is disabled", key_id=state.key_id)
        scopes = scopes_of_roles(state.roles, state.tenant)
        if state.scopes:
            scopes &= state.scopes
        limits, tier = await self._limits(state.tenant)
        self._maybe_touch(state, now)
        return Caller(principal_id=state.principal_id, tenant=state.tenant, scopes=scopes,
                      credential_type=str(CredentialKind.API_KEY), key_id=state.key_id,
                      service_account=state.service_account, tier=tier,
                      requests_per_second=limits.requests_per_second, burst=limits.burst,
                      roles=tuple(str(r) for r in state.roles))

    async def _key_state(self, prefix: str) -> KeyState | None:
        cached = self._states.get(prefix)
        if cached is not None and time.monotonic() - cached[1] < self._key_ttl:
            return cached[0]
        store = self._store
        assert store is not None

        async def load() -> KeyState | None:
            state = await store.key_by_prefix(prefix)
            self._states.put(prefix, (state, time.monotonic()))
            return state

        return await self._key_loads.run(prefix, load)

    def forget_key(self, prefix: str) -> None:
        """Drops a key's cached state (a revocation seen by this process takes effect on its next request)."""
        self._states.pop(prefix)

    def _maybe_touch(self, state: KeyState, now: datetime) -> None:
        last = state.last_used_time
        if last is not None and (now - last).total_seconds() < self._touch_interval:
            return
        touched = self._touched.get(state.key_id)
        if touched is not None and time.monotonic() - touched < self._touch_interval:
            return
        self._touched.put(state.key_id, time.monotonic())
        store = self._store
        assert store is not None

        async def touch() -> None:
            try:
                await store.touch_key(state.key_id, now)
            except Exception:
                log.warning("could not record API key %s as used", state.key_id, exc_info=True)

        task = asyncio.create_task(touch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- tenants -----------------------------------------------------------------------------------------------

    async def _limits(self, tenant_id: str) -> tuple[Limits, str]:
        tenant = await self.tenant(tenant_id)
        if tenant is None:
            raise unauthenticated("the credential's tenant does not exist")
        return self._tiers.effective(tenant.tier, tenant.overrides), str(tenant.tier)

    async def tenant(self, tenant_id: str) -> TenantInfo | None:
        cached = self._tenants.get(tenant_id)
        if cached is not None and time.monotonic() - cached[1] < _TENANT_TTL_SECONDS:
            return cached[0]
        store = self._store
        assert store is not None

        async def load() -> TenantInfo | None:
            tenant = await store.tenant(tenant_id)
            self._tenants.put(tenant_id, (tenant, time.monotonic()))
            return tenant

        return await self._tenant_loads.run(tenant_id, load)

    # --- tokens ------------------------------------------------------------------------------------------------

    async def _token_caller(self, token: str) -> Caller:
        try:
            kid = token_kid(token)
            key = await self._signing_key(kid)
            if key is None:
                raise TokenError("the token's signing key is unknown or retired")
            claims = verify_token(token, key[0], key[1])
        except TokenError as exc:
            raise unauthenticated(str(exc)) from None
        limits, tier = await self._limits(claims.tenant)
        return Caller(principal_id=claims.principal_id, tenant=claims.tenant, scopes=claims.scopes,
                      credential_type=str(CredentialKind.TOKEN), key_id=claims.key_id,
                      service_account=claims.service_account, tier=tier,
                      requests_per_second=limits.requests_per_second, burst=limits.burst)

    async def _signing_key(self, kid: str) -> tuple[PublicSigningKey, Ed25519PublicKey] | None:
        now = time.monotonic()
        stale = now - self._signing_loaded >= self._signing_ttl
        unknown = kid not in self._signing and now - self._signing_forced >= _FORCED_REFRESH_SECONDS
        if stale or unknown:
            if unknown:
                self._signing_forced = now
            await self._signing_loads.run("keys", self._load_signing_keys)
        found = self._signing.get(kid)
        if found is None or not found[0].verifies_at(self._clock()):
            return None
        return found

    async def _load_signing_keys(self) -> None:
        store = self._store
        assert store is not None
        keys = await store.signing_keys(self._clock())
        loaded: dict[str, tuple[PublicSigningKey, Ed25519PublicKey]] = {}
        for key in keys:
            previous = self._signing.get(key.kid)
            try:
                loaded[key.kid] = (key, previous[1] if previous else load_public_key(key.public_key_pem))
            except ValueError:
                log.warning("signing key %s is not a usable Ed25519 public key", key.kid)
        self._signing = loaded
        self._signing_loaded = time.monotonic()
