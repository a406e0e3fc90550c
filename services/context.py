"""Shared resources of one service process, created on first use and closed once at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as redis

from service_runtime.db import Database
from service_runtime.object_store import ObjectStore
from service_runtime.pagination import PageTokenCodec
from service_runtime.redis_client import create_redis
from service_runtime.secrets import deployment_secret
from service_runtime.settings import Settings

log = logging.getLogger(__name__)
RESTART_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
STOP_ROUNDS = 5  # cancellations sent to a background loop before it is given up on
STOP_ROUND_SECONDS = 2.0


async def _supervise(name: str, loop_factory: Callable[[], Awaitable[None]]) -> None:
    """Runs a background loop forever: one that raises is logged and restarted with backoff, never lost."""
    failures = 0
    while True:
        try:
            await loop_factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = RESTART_BACKOFF_SECONDS[min(failures, len(RESTART_BACKOFF_SECONDS) - 1)]
            failures += 1
            log.exception("background loop %s failed; restarting in %.1fs", name, delay)
            await asyncio.sleep(delay)


async def _stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancels the background loops and waits for them, cancelling again any that did not stop.

    On Python 3.11 a cancellation can be lost when it lands just as an inner await completes (asyncio.wait_for's
    known race, and libraries built on it): the loop then runs on, and a plain gather would wait forever. Each
    round cancels what is still running; after the last one the survivors are named and abandoned.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(STOP_ROUNDS):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_ROUND_SECONDS)
        for task in pending:
            log.warning("background loop %s ignored its cancellation; cancelling it again", task.get_name())
    if pending:
        log.error("background loops still running after %d cancellations: %s", STOP_ROUNDS,
                  ", ".join(sorted(task.get_name() for task in pending)))


@dataclass
class AppContext:
    """What the components of a process share: in one-process mode, one pool per backing system, not six."""

    settings: Settings
    _db: Database | None = None
    _redis: redis.Redis | None = None
    _store: ObjectStore | None = None
    _tokens: PageTokenCodec | None = None
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _loops: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

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

    def background(self, name: str, loop_factory: Callable[[], Awaitable[None]]) -> None:
        """Registers a loop (dispatcher, janitor, relay) that runs while the server serves, restarted if it fails."""
        self._loops.append((name, loop_factory))

    async def start_background(self) -> None:
        for name, factory in self._loops:
            self._tasks.append(asyncio.create_task(_supervise(name, factory), name=name))

    async def close(self) -> None:
        await _stop_tasks(self._tasks)
        self._tasks.clear()
        for closer in reversed(self._closers):
            await closer()
        if self._db is not None:
            await self._db.dispose()
        if self._redis is not None:
            await self._redis.aclose()
