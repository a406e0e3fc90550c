"""Fleet membership: the executor registers with the ExecutionService, heartbeats, and deregisters when it stops.

- Register (once the executor has started: worker up, models preloaded, warm-up done) with its id, the address its
  GpuExecutorService listens on, its labels and its full description, node catalog included.
- Heartbeat every `heartbeat_interval` (from the registration's response) with the current description without
  the catalog (state, device memory and utilisation, cached models per tier, tier statistics, the execution in
  progress); the catalog travels again only when its hash changed. `known=false` → register again; `drain=true`
  → `on_drain` (the executor drains and exits, as on SIGTERM).
- An unreachable execution service is retried with exponential backoff, logged, and never crashes the executor or
  delays serving: membership runs in its own task.
- `stop` deregisters (bounded: a dead execution service does not hold up the exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio

from comfymesh.execution.v1 import execution_service_pb2 as pb
from comfymesh.execution.v1 import execution_service_pb2_grpc
from comfymesh.executor.v1 import executor_service_pb2
from service_runtime.grpc.channels import channel_to
from service_runtime.settings import Settings

log = logging.getLogger(__name__)

RPC_TIMEOUT_SECONDS = 5.0
DEREGISTER_TIMEOUT_SECONDS = 3.0
MAX_BACKOFF_SECONDS = 30.0

Describe = Callable[[bool], Awaitable[executor_service_pb2.ExecutorDescription]]


def parse_labels(text: str) -> dict[str, str]:
    """"k=v,k=v" → {"k": "v", ...}; raises ValueError for an item without "=" or with an empty key."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"executor label {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


class FleetMembership:
    def __init__(self, settings: Settings, executor_id: str, address: str, labels: dict[str, str],
                 describe: Describe, on_drain: Callable[[], None]) -> None:
        self.settings = settings
        self.executor_id = executor_id
        self.address = address
        self.labels = labels
        self._describe = describe
        self._on_drain = on_drain
        self.interval = settings.executor_heartbeat_seconds
        self.registered = False
        self.registrations = 0
        self._catalog_hash = ""
        self._channel: grpc.aio.Channel | None = None
        self._stub: execution_service_pb2_grpc.ExecutionServiceAsyncStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._channel = channel_to("execution", self.settings, bearer=self.settings.executor_api_key or None)
        self._stub = execution_service_pb2_grpc.ExecutionServiceStub(self._channel)
        self._task = asyncio.create_task(self._run(), name="fleet-membership")

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                if not self.registered:
                    await self._register()
                    backoff = 0.5
                await self._sleep(self.interval)
                await self._heartbeat()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("execution service at %s: %s %s; retrying in %.1f s", self.settings.address_of("execution"),
                            exc.code().name, exc.details(), backoff)
                await self._sleep(backoff * (0.8 + 0.4 * random.random()))  # noqa: S311 - jitter, not crypto
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception:
                log.exception("fleet membership failed; retrying in %.1f s", backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, or less when `heartbeat_now` wakes the loop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _register(self) -> None:
        assert self._stub is not None
        description = await self._describe(True)
        response = await self._stub.RegisterExecutor(pb.RegisterExecutorRequest(
            executor_id=self.executor_id, address=self.address, description=description, labels=self.labels),
            timeout=RPC_TIMEOUT_SECONDS)
        self._catalog_hash = description.catalog_hash
        interval = response.heartbeat_interval.ToNanoseconds() / 1e9
        self.interval = interval if interval > 0 else self.settings.executor_heartbeat_seconds
        self.registered = True
        self.registrations += 1
        log.info("registered with the execution service", extra={"executor_id": self.executor_id,
                                                                 "address": self.address,
                                                                 "heartbeat_seconds": self.interval})

    async def _heartbeat(self) -> None:
        assert self._stub is not None
        description = await self._describe(False)
        if description.catalog_hash != self._catalog_hash:  # node packs or model lists changed
            description = await self._describe(True)
        response = await self._stub.Heartbeat(pb.HeartbeatRequest(executor_id=self.executor_id,
                                                                  description=description),
                                              timeout=RPC_TIMEOUT_SECONDS)
        self._catalog_hash = description.catalog_hash
        if not response.known:
            log.info("the execution service does not know this executor; registering again")
            self.registered = False
            self._wake.set()
        if response.drain:
            log.info("the execution service asks this executor to drain")
            self._on_drain()

    def heartbeat_now(self) -> None:
        """Sends the next heartbeat now (e.g. to report DRAINING at once)."""
        self._wake.set()

    async def report(self) -> None:
        """One heartbeat now, awaited (best effort: failures are logged)."""
        if not self.registered or self._stub is None:
            return
        try:
            await self._heartbeat()
        except grpc.aio.AioRpcError as exc:
            log.warning("heartbeat failed: %s %s", exc.code().name, exc.details())

    async def stop(self) -> None:
        """Stops heartbeating and deregisters (bounded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._stub is not None and self.registered:
            try:
                await self._stub.DeregisterExecutor(pb.DeregisterExecutorRequest(executor_id=self.executor_id),
                                                    timeout=DEREGISTER_TIMEOUT_SECONDS)
                log.info("deregistered from the execution service", extra={"executor_id": self.executor_id})
            except grpc.aio.AioRpcError as exc:
                log.warning("deregistration failed: %s %s", exc.code().name, exc.details())
            self.registered = False
        if self._channel is not None:
            await self._channel.close()
