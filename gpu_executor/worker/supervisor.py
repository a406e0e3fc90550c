"""Supervises the worker process: one job at a time, events streamed back, crashes and hangs contained.

- The worker dies during a job (a node crashed the interpreter, the kernel's OOM killer): the job ends with a
  retryable EXECUTOR_LOST failure and a fresh worker is started for the next one.
- An interrupt is delivered through a shared flag the engine checks between nodes and at every progress step; a
  node that ignores it for longer than the grace period gets the worker killed, and the job ends with the same
  retryable EXECUTOR_LOST failure.

The worker reports the node catalog when it is ready and its model cache state after every model load, job and
prefetch; `on_state` receives each report, `on_worker_lost` hears when a worker (and what it held) is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc

from gpu_executor.engine.events import TERMINAL, Event, Failed
from gpu_executor.model_tiers.state import CacheState, Prefetch, PrefetchOutcome
from gpu_executor.worker.child import CatalogRequest, Job, Ready, WorkerConfig, main
from service_runtime.errors import Reason, ServiceError

log = logging.getLogger(__name__)
_CONTEXT = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC and CUDA state


@dataclass(frozen=True)
class WorkerLost:
    """The worker died mid-job: a retryable failure (the job may succeed on another executor)."""

    message: str
    exit_code: int | None


class WorkerSupervisor:
    def __init__(self, config: WorkerConfig, *, start_timeout: float = 120.0, interrupt_grace: float = 10.0) -> None:
        self.config = config
        self.start_timeout = start_timeout
        self.interrupt_grace = interrupt_grace
        self._process: Any = None
        self._conn: Connection | None = None
        self._interrupt: Any = None
        self._interrupt_requested_at: float | None = None
        self._killed_after_interrupt = False
        self._lock = asyncio.Lock()  # one conversation with the worker at a time (a job or a prefetch)
        self._starting = False
        self.ready: Ready | None = None
        self.catalog_hash = ""
        self.restarts = 0
        self.on_state: Callable[[CacheState], None] = lambda state: None
        self.on_worker_lost: Callable[[], None] = lambda: None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        parent, child = _CONTEXT.Pipe()
        self._interrupt = _CONTEXT.Event()
        self._process = _CONTEXT.Process(target=main, args=(child, self._interrupt, self.config),
                                         name="comfymesh-worker", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        self._starting = True  # until it is ready (a start cancelled midway leaves it set: stop() kills it)
        ready = await asyncio.wait_for(asyncio.to_thread(self._recv_or_none, self.start_timeout),
                                       self.start_timeout + 5)
        self._starting = False
        if self._process is None:
            raise RuntimeError("the worker was stopped while it started")
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"worker failed to start (exit code {self._process.exitcode})")
        self.ready = ready[2]
        self.catalog_hash = self.ready.catalog_hash
        self.on_state(self.ready.state)

    @property
    def starting(self) -> bool:
        return self._starting

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def _recv_or_none(self, timeout: float) -> tuple[str, str, Any] | None:
        conn, process = self._conn, self._process
        assert conn is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if conn.poll(0.1):
                    message: tuple[str, str, Any] = conn.recv()
                    return message
            except (EOFError, OSError):
                return None
            if process is None or not process.is_alive():
                return None
        return None

    async def run(self, job: Job) -> AsyncIterator[Event | WorkerLost]:
        """Runs a job, yielding engine events until the terminal one (or WorkerLost).

        The terminal event is held back until the worker reports the job done, so the pipe is empty when the caller
        stops iterating, and the next job never reads this one's messages.
        """
        async with self._lock:
            async for item in self._run(job):
                yield item

    async def _run(self, job: Job) -> AsyncIterator[Event | WorkerLost]:
        await self._ensure_running()
        assert self._conn is not None
        self._interrupt_requested_at = None
        self._killed_after_interrupt = False
        self._conn.send(job)
        terminal: Event | None = None
        while True:
            message = await asyncio.to_thread(self._recv_or_none, 1.0)
            if message is None:
                if not self._process.is_alive():
                    exit_code = self._process.exitcode
                    killed_for_ignoring = self._killed_after_interrupt
                    await self._restart()
                    if killed_for_ignoring:
                        yield WorkerLost(f"a node ignored the interrupt for {self.interrupt_grace:.0f} s; the worker "
                                         "was killed and restarted", exit_code)
                    else:
                        yield WorkerLost(f"the worker process exited with code {exit_code} during the job",
                                         exit_code)
                    return
                if (self._interrupt_requested_at is not None
                        and time.monotonic() - self._interrupt_requested_at > self.interrupt_grace):
                    log.warning("a node ignored the interrupt for %.0f s; killing the worker", self.interrupt_grace)
                    self._killed_after_interrupt = True
                    self._process.kill()
                continue
            kind, token, payload = message
            if kind == "cache":
                self.on_state(payload)
                continue
            if token != job.token:
                log.warning("discarding a stale %s message from the worker", kind)
                continue
            if kind == "event":
                if isinstance(payload, TERMINAL):
                    terminal = payload
                else:
                    yield payload
            elif kind == "done":
                self.on_state(payload)
                if terminal is not None:
                    yield terminal
                return

    async def ensure_running(self) -> None:
        """Replaces a worker that died while idle (its cache state is reported gone)."""
        async with self._lock:
            await self._ensure_running()

    async def _ensure_running(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        if self.ready is not None:  # it was up before: whatever it held is gone
            log.warning("the worker process exited while idle (code %s); starting a new one",
                        self._process.exitcode if self._process is not None else None)
            self.restarts += 1
            self.on_worker_lost()
        await self.start()

    async def prefetch(self, names: tuple[str, ...], tier: str) -> PrefetchOutcome:
        """Has the worker bring models to a tier ("gpu", "ram" or "disk"). A worker that dies meanwhile is replaced
        and the prefetch fails with a retryable EXECUTOR_LOST."""
        async with self._lock:
            await self._ensure_running()
            assert self._conn is not None
            request = Prefetch(uuid.uuid4().hex, names, tier)
            self._conn.send(request)
            while True:
                message = await asyncio.to_thread(self._recv_or_none, 1.0)
                if message is None:
                    if not self._process.is_alive():
                        exit_code = self._process.exitcode
                        await self._restart()
                        raise ServiceError(grpc.StatusCode.UNAVAILABLE, Reason.EXECUTOR_LOST,
                                           f"the worker process exited with code {exit_code} while loading models",
                                           {"exit_code": str(exit_code)})
                    continue
                kind, token, payload = message
                if kind == "cache":
                    self.on_state(payload)
                elif kind == "prefetched" and token == request.token:
                    outcome, state = payload
                    self.on_state(state)
                    return outcome  # type: ignore[no-any-return]
                else:
                    log.warning("discarding a stale %s message from the worker", kind)

    async def refresh_catalog(self) -> bool | None:
        """Has the idle worker list its catalog again (model folders change while it runs); True when the catalog
        changed. Skipped (None) while a job or a prefetch holds the worker: the caller asks again later."""
        if self._lock.locked() or self.ready is None:
            return None
        async with self._lock:
            await self._ensure_running()
            assert self._conn is not None and self.ready is not None
            request = CatalogRequest(uuid.uuid4().hex)
            self._conn.send(request)
            while True:
                message = await asyncio.to_thread(self._recv_or_none, 1.0)
                if message is None:
                    if not self._process.is_alive():
                        await self._restart()
                        return True  # a fresh worker reported a fresh catalog
                    continue
                kind, token, payload = message
                if kind == "cache":
                    self.on_state(payload)
                elif kind == "catalog" and token == request.token:
                    catalog, digest = payload
                    changed = digest != self.ready.catalog_hash
                    self.ready = dataclasses.replace(self.ready, catalog=catalog, catalog_hash=digest)
                    self.catalog_hash = digest
                    return bool(changed)
                else:
                    log.warning("discarding a stale %s message from the worker", kind)

    def interrupt(self) -> None:
        if self._interrupt is not None:
            self._interrupt.set()
            self._interrupt_requested_at = time.monotonic()

    async def _restart(self) -> None:
        self.restarts += 1
        self.on_worker_lost()
        await asyncio.to_thread(self._process.join, 5)
        await self.start()

    async def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if self._starting:  # still importing: it would read the exit message only once it is ready
            process.kill()
        elif self._conn is not None and process.is_alive():
            with contextlib.suppress(OSError):  # the worker may already be gone
                self._conn.send(None)
        await asyncio.to_thread(process.join, 5)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5)
        self._process = None


def failure_of(lost: WorkerLost) -> Failed:
    return Failed("EXECUTOR_LOST", lost.message, exception_type="WorkerLost")
