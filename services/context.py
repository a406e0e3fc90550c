"""Shared resources of one service process, created on first use and closed once at shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as redis

from service_runtime.db import Database
from service_runtime.object_store import ObjectStore
from service_runtime.pagination import PageTokenCodec
from service_runtime.redis_client import create_redis
from service_runtime.secrets import deployment_secret
from service_runtime.settings import Settings


@dataclass
class AppContext:
    """What the components of a process share: in one-process mode, one pool per backing system, not six."""

    settings: Settings
    _db: Database | None = None
    _redis: redis.Redis | None = None
    _store: ObjectStore | None = None
    _tokens: PageTokenCodec | None = None
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.resolved_database_url, pool_size=self.settings.database_pool_size)
        return self._db

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = create_redis(self.settings.redis_url)
        return self._redis

    @property
    def object_store(self) -> ObjectStore:
        if self._store is None:
            self._store = ObjectStore.from_settings(self.settings)
        return self._store

    @property
    def page_tokens(self) -> PageTokenCodec:
        if self._tokens is None:
            self._tokens = PageTokenCodec(deployment_secret(self.settings))
        return self._tokens

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Registers a cleanup (a client channel, say) to run when the process stops."""
        self._closers.append(closer)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        if self._db is not None:
            await self._db.dispose()
        if self._redis is not None:
            await self._redis.aclose()
