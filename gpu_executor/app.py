"""The executor process: serving at once, starting up behind it, joining the fleet, and draining on SIGTERM.

Start: the gRPC server answers first (Describe within a second or two: no torch in this process, no model loaded),
in state STARTING; behind it the worker process starts (it builds the engine and the catalog), the configured
models are preloaded into RAM, the warm-up graph runs, and only then is the executor IDLE and registered with the
execution service. An Execute that arrives while it starts waits for it.

SIGTERM or SIGINT (or a heartbeat answered with drain=true): the executor drains. It takes no new work (Execute →
EXECUTOR_DRAINING, Describe and heartbeats say DRAINING), lets the running execution finish for up to
`shutdown_grace_seconds`, then interrupts it (its stream still ends with its terminal event), deregisters, stops
the server and the worker, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from pathlib import Path
from typing import Any

from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from gpu_executor.engine.events import Failed, Succeeded
from gpu_executor.execution import ExecutionRunner
from gpu_executor.fleet import FleetMembership, parse_labels
from gpu_executor.model_tiers.resolver import ResolverConfig, StoreConfig
from gpu_executor.model_tiers.state import CacheView
from gpu_executor.models_watch import models_signature
from gpu_executor.telemetry.metrics import export_cache_state, register_executor_collector
from gpu_executor.transport import ExecutorServicer
from gpu_executor.worker.backend import ExecutionBackend
from gpu_executor.worker.child import WorkerConfig
from gpu_executor.worker.supervisor import WorkerLost, WorkerSupervisor
from service_runtime.auth.interceptor import auth_interceptor
from service_runtime.grpc import GrpcServer, ServiceBinding
from service_runtime.object_store import ObjectStore
from service_runtime.settings import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = executor_service_pb2.DESCRIPTOR.services_by_name["GpuExecutorService"].full_name
STREAM_FLUSH_SECONDS = 5.0  # after draining: how long the finished streams get to deliver their last events
WATCHDOG_SECONDS = 2.0


def resolver_config(settings: Settings) -> ResolverConfig:
    store = None
    if settings.s3_endpoint:
        store = StoreConfig(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                            f"{settings.s3_bucket_prefix}-models", secure=settings.s3_secure,
                            region=settings.s3_region)
    cache_dir = (settings.model_cache_dir or settings.home / "model-cache").resolve()
    return ResolverConfig(settings.models_dir, cache_dir, settings.executor_disk_cache_bytes, store)


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(tuple(settings.custom_node_paths), settings.models_dir, settings.tokenizer_dir,
                        resolver_config(settings), settings.executor_ram_cache_bytes,
                        settings.executor_gpu_cache_bytes)


def make_backend(settings: Settings) -> ExecutionBackend:
    """The engine that runs graphs (COMFYMESH_EXECUTOR_ENGINE): the built-in one in a supervised worker process, or
    ComfyUI (started from COMFYMESH_COMFYUI_PATH, or attached at COMFYMESH_COMFYUI_URL)."""
    if settings.executor_engine == "comfyui":
        from gpu_executor.comfyui.backend import ComfyUIBackend, ComfyUIConfig

        return ComfyUIBackend(ComfyUIConfig.from_settings(settings, resolver_config(settings)))
    return WorkerSupervisor(worker_config(settings), interrupt_grace=settings.interrupt_grace_seconds)


def load_graph(path: Path) -> Any:
    """An API-format graph file (or a /prompt body with a "prompt" key); json keeps 64-bit seeds exact."""
    document = json.loads(path.read_text())
    if isinstance(document, dict) and isinstance(document.get("prompt"), dict) and "class_type" not in document:
        return document["prompt"]
    return document


class ExecutorApp:
    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.labels = parse_labels(settings.executor_labels)  # a bad label fails the start, before serving
        self.warmup_graph = load_graph(settings.executor_warmup_graph) if settings.executor_warmup_graph else None
        self.view = CacheView()
        self.supervisor = make_backend(settings)
        self.supervisor.on_state = lambda state: export_cache_state(self.view, state)
        self.supervisor.on_worker_lost = self.view.worker_replaced
        store = ObjectStore.from_settings(settings) if settings.s3_endpoint else None
        self.runner = ExecutionRunner(settings, self.supervisor, store)
        self.executor_id = settings.executor_id or f"{socket.gethostname()}:{port}"
        self.servicer = ExecutorServicer(lambda: self.executor_id, self.runner, self.supervisor, self.view,
                                         settings.executor_engine)
        binding = ServiceBinding(SERVICE_NAME, self.servicer,
                                 executor_service_pb2_grpc.add_GpuExecutorServiceServicer_to_server)
        # Only the execution service's dispatcher calls an executor: the internal credential alone is accepted.
        self.server = GrpcServer(settings, "executor", [binding], port, auth=auth_interceptor(settings, None, None))
        self.server.on_stop.append(self.supervisor.stop)
        self.fleet: FleetMembership | None = None
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._startup: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._models_watch: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("drain requested")
        self._stop.set()

    async def run(self) -> int:
        """Serves until SIGTERM/SIGINT (or a drain request), drains, and returns the process exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        register_executor_collector(lambda: self.supervisor.pid)
        await self.server.start()
        if not self.settings.executor_id:
            self.executor_id = f"{socket.gethostname()}:{self.server.bound_port}"
        self._startup = asyncio.create_task(self._start_up(), name="executor-startup")
        await self._stop.wait()
        await self.drain()
        return self.exit_code

    async def _start_up(self) -> None:
        try:
            await self.supervisor.start()
        except Exception as exc:
            log.exception("the %s engine did not start", self.settings.executor_engine)
            self.runner.startup_finished(f"{type(exc).__name__}: {exc}")
            self.exit_code = 1
            self.request_stop()
            return
        ready = self.supervisor.ready
        for pack, node_class, error in ready.problems if ready is not None else ():
            log.warning("custom nodes %s skipped: %s", pack, error, extra={"node_class": node_class})
        await self._preload()
        if self.warmup_graph is not None:
            await self._warm_up()
        self.runner.startup_finished()
        log.info("executor ready", extra={"executor_id": self.executor_id})
        self._watchdog = asyncio.create_task(self._watch_worker(), name="worker-watchdog")
        self._models_watch = asyncio.create_task(self._watch_models(), name="models-watch")
        if self.settings.executor_register:
            address = self.settings.executor_advertise_addr or f"127.0.0.1:{self.server.bound_port}"
            self.fleet = FleetMembership(self.settings, self.executor_id, address, self.labels,
                                         self.servicer.describe, self.request_stop)
            self.fleet.start()

    async def _watch_worker(self) -> None:
        """A worker that dies between jobs is replaced now, not when the next job finds it dead, so Describe and
        heartbeats do not report models it no longer holds."""
        while not self.runner.draining:
            await asyncio.sleep(WATCHDOG_SECONDS)
            if not self.runner.busy and not self.runner.draining and not self.supervisor.alive:
                try:
                    await self.supervisor.ensure_running()
                except Exception:
                    log.exception("restarting the worker failed")

    async def _watch_models(self) -> None:
        """Model files added to or removed from the models directory while the executor runs: the engine lists its
        catalog again when idle, and the fleet hears the new catalog at once (models_watch.py)."""
        interval, root = self.settings.executor_models_rescan_seconds, self.settings.models_dir
        if not interval or root is None:
            return
        seen = await asyncio.to_thread(models_signature, root)
        while not self.runner.draining:
            await asyncio.sleep(interval)
            now = await asyncio.to_thread(models_signature, root)
            if now == seen or self.runner.busy:
                continue
            try:
                changed = await self.supervisor.refresh_catalog()
            except Exception:
                log.exception("listing the catalog again failed")
                continue
            if changed is None:  # a job or prefetch took the engine meanwhile: try again next time
                continue
            seen = now
            if changed:
                log.info("the models directory changed: catalog listed again",
                         extra={"catalog_hash": self.supervisor.catalog_hash})
                if self.fleet is not None:
                    await self.fleet.report()

    async def _preload(self) -> None:
        names = tuple(dict.fromkeys(n.strip() for n in self.settings.executor_preload_models.split(",") if n.strip()))
        if not names:
            return
        try:
            outcome = await self.supervisor.prefetch(names, "ram")
        except Exception:
            log.exception("preloading models failed")
            return
        if outcome.missing or outcome.error:
            log.error("preloading models failed: %s", outcome.error or f"not found: {', '.join(outcome.missing)}")
        else:
            log.info("preloaded %d models in %.2f s", len(outcome.models), outcome.seconds,
                     extra={"models": [m.name for m in outcome.models]})

    async def _warm_up(self) -> None:
        final = await self.runner.warm_up(self.warmup_graph)
        if isinstance(final, Succeeded):
            log.info("warm-up graph succeeded", extra={"seconds": round(sum(t.seconds for t in final.timings), 3)})
        elif isinstance(final, Failed):
            log.error("warm-up graph failed: %s %s", final.reason, final.message)
        elif isinstance(final, WorkerLost):
            log.error("warm-up graph lost the worker: %s", final.message)
        else:
            log.error("warm-up graph ended with %r", final)

    async def drain(self) -> None:
        settings = self.settings
        self.runner.draining = True
        log.info("draining", extra={"running_execution_id": self.runner.current[0] if self.runner.current else ""})
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._models_watch is not None:
            self._models_watch.cancel()
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()  # stop preloading or warming up; what the worker does then is interrupted
            self.supervisor.interrupt()
            self.runner.startup_finished("the executor is shutting down")
        if self.fleet is not None:
            await self.fleet.report()  # the execution service sees DRAINING now, not at the next heartbeat
        if not await self.runner.wait_idle(settings.shutdown_grace_seconds):
            log.warning("the running execution did not finish within %.0f s; interrupting it",
                        settings.shutdown_grace_seconds)
            self.runner.interrupt("")
            await self.runner.wait_idle(settings.interrupt_grace_seconds + 15.0)
        if self.fleet is not None:
            await self.fleet.stop()
        await self.server.stop(STREAM_FLUSH_SECONDS)
        log.info("executor stopped")
