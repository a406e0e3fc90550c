"""Supervises the worker process: one job at a time, events streamed back, crashes and hangs contained.

- The worker dies during a job (a node crashed the interpreter, the kernel's OOM killer): the job ends with a
  retryable EXECUTOR_LOST failure and a fresh worker is started for the next one.
- An interrupt is delivered through a shared flag the engine checks between nodes and at every progress step; a
  node that ignores it for longer than the grace period gets the worker killed, and the job ends with the same
  retryable EXECUTOR_LOST failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gpu_executor.engine.events import TERMINAL, Event, Failed
from gpu_executor.worker.child import Job, WorkerConfig, main

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
        self.catalog_hash = ""
        self.restarts = 0

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
        ready = await asyncio.wait_for(asyncio.to_thread(self._recv_or_none, self.start_timeout),
                                       self.start_timeout + 5)
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"worker failed to start (exit code {self._process.exitcode})")
        self.catalog_hash = str(ready[2])

    def _recv_or_none(self, timeout: float) -> tuple[str, str, Any] | None:
        assert self._conn is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._conn.poll(0.1):
                try:
                    message: tuple[str, str, Any] = self._conn.recv()
                except (EOFError, OSError):
                    return None
                return message
            if not self._process.is_alive():
                return None
        return None

    async def run(self, job: Job) -> AsyncIterator[Event | WorkerLost]:
        """Runs a job, yielding engine events until the terminal one (or WorkerLost).

        The terminal event is held back until the worker reports the job done, so the pipe is empty when the caller
        stops iterating, and the next job never reads this one's messages.
        """
        if self._process is None or not self._process.is_alive():
            await self.start()
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
            if token != job.token:
                log.warning("discarding a stale %s message from the worker", kind)
                continue
            if kind == "event":
                if isinstance(payload, TERMINAL):
                    terminal = payload
                else:
                    yield payload
            elif kind == "done":
                if terminal is not None:
                    yield terminal
                return

    def interrupt(self) -> None:
        if self._interrupt is not None:
            self._interrupt.set()
            self._interrupt_requested_at = time.monotonic()

    async def _restart(self) -> None:
        self.restarts += 1
        await asyncio.to_thread(self._process.join, 5)
        await self.start()

    async def stop(self) -> None:
        if self._process is None:
            return
        if self._conn is not None and self._process.is_alive():
            with contextlib.suppress(OSError):  # the worker may already be gone
                self._conn.send(None)
        await asyncio.to_thread(self._process.join, 5)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 5)
        self._process = None


def failure_of(lost: WorkerLost) -> Failed:
    return Failed("EXECUTOR_LOST", lost.message, exception_type="WorkerLost")
