"""The worker process: builds the engine once (models stay loaded in this process), then runs one job at a time and
sends every engine event back over the pipe. A crash, an out-of-memory kill or a hang here never takes the gRPC
server down: the supervisor notices, ends the job with a typed retryable error, and starts a fresh worker.

The worker holds every model cache tier (loaded models in RAM and on the device; the disk cache and the object
store through its model resolver) and reports their state to the server after each model load, job and prefetch.
It also builds the node catalog, so the server process never imports torch.

Messages, server → worker: a `Job`, a `Prefetch`, or None (exit). Worker → server: ("ready", "", Ready) once,
("event", token, engine event), ("cache", "", CacheState) after a model load or move, ("done", token, CacheState)
after a job, ("prefetched", token, (PrefetchOutcome, CacheState)) after a prefetch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_executor.model_tiers.resolver import ResolverConfig
    from gpu_executor.model_tiers.state import CacheState


@dataclass(frozen=True)
class Job:
    token: str  # unique per run: every message about this job carries it, so nothing stale is ever mistaken for it
    execution_id: str
    attempt: int
    prompt: Any
    output_dir: Path
    temp_dir: Path
    input_dir: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    tenant: str = ""  # whose uploaded models the graph may name (runtime.bind_tenant)


@dataclass(frozen=True)
class WorkerConfig:
    custom_node_dirs: tuple[Path, ...] = ()
    models_dir: Path | None = None
    tokenizer_dir: Path | None = None
    resolver: ResolverConfig | None = None  # the disk cache and the models bucket; None: the models dir only
    ram_cache_bytes: int = 0  # 0: the model store's default
    gpu_cache_bytes: int = 0


@dataclass(frozen=True)
class CatalogRequest:
    """Asks the worker for its catalog again: loader choices list the model folders as they are now."""

    token: str


@dataclass(frozen=True)
class Ready:
    catalog: dict[str, Any]  # ComfyUI /object_info shape
    catalog_hash: str
    problems: tuple[tuple[str, str, str], ...]  # (pack, node class, error) of custom nodes that did not load
    state: CacheState


class _Sender:
    """Sends from any thread (a cache report may come from a node's thread while the engine emits events)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def __call__(self, message: tuple[str, str, Any]) -> None:
        with self._lock:
            self._conn.send(message)


class _PipeSink:
    def __init__(self, send: _Sender, token: str) -> None:
        self._send = send
        self._token = token

    def emit(self, event: Any) -> None:
        self._send(("event", self._token, event))


def _exit_with_parent() -> None:
    """A worker whose server died (SIGKILL, OOM) must not outlive it, even in the middle of a job."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(conn: Connection, interrupt: Any, config: WorkerConfig) -> None:
    """Entry point of the child process (multiprocessing 'spawn')."""
    # The server decides when the worker ends (it drains first): a SIGTERM or Ctrl-C sent to the whole process
    # group must not kill the job it is finishing.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()

    from gpu_executor.diffusion import model_cache
    from gpu_executor.diffusion.text.conditioning import configure_tokenizer_dir
    from gpu_executor.engine import runtime
    from gpu_executor.engine.cache import OutputCache
    from gpu_executor.engine.engine import Engine, ExecutionRequest
    from gpu_executor.engine.registry import build_registry, catalog_digest
    from gpu_executor.model_tiers.resolver import ModelResolver
    from gpu_executor.model_tiers.state import Prefetch
    from gpu_executor.worker.models import WorkerModels

    logging.basicConfig(level=logging.WARNING)
    runtime.bind_models_root(config.models_dir)
    configure_tokenizer_dir(config.tokenizer_dir)
    model_cache.configure_budgets(ram_budget_bytes=config.ram_cache_bytes, device_budget_bytes=config.gpu_cache_bytes)
    # The interrupt flag is a multiprocessing.Event shared with the supervisor; the engine wants a threading.Event
    # interface, which multiprocessing.Event provides (is_set/set/clear).
    flag: threading.Event = interrupt
    resolver = ModelResolver(config.resolver, interrupted=flag.is_set) if config.resolver is not None else None
    runtime.set_model_source(resolver)
    models = WorkerModels(resolver)
    send = _Sender(conn)
    model_cache.add_listener(lambda: send(("cache", "", models.state())))
    registry = build_registry(list(config.custom_node_dirs))
    engine = Engine(registry)
    cache_tenant = ""  # whose job last filled the engine's output cache
    problems = tuple((p.pack, p.node_class or "", str(p.error)) for p in registry.errors)
    catalog = registry.catalog()
    send(("ready", "", Ready(catalog, catalog_digest(catalog), problems, models.state())))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message is None:
                return
            flag.clear()
            model_cache.new_epoch()
            if isinstance(message, CatalogRequest):
                catalog = registry.catalog()
                send(("catalog", message.token, (catalog, catalog_digest(catalog))))
                continue
            if isinstance(message, Prefetch):
                outcome = models.prefetch(message)
                send(("prefetched", message.token, (outcome, models.state())))
                continue
            job: Job = message
            request = ExecutionRequest(job.execution_id, job.prompt, job.output_dir, job.temp_dir, job.input_dir,
                                       dict(job.inputs))
            if job.tenant != cache_tenant:
                # Cached node outputs (a loaded checkpoint, say) may come from another tenant's private model of
                # the same name: never let them cross tenants.
                engine.cache = OutputCache()
                cache_tenant = job.tenant
            tenant_token = runtime.bind_tenant(job.tenant)
            try:
                engine.execute(request, _PipeSink(send, job.token), flag)
            finally:
                runtime.unbind_tenant(tenant_token)
            send(("done", job.token, models.state()))
    finally:
        if resolver is not None:
            resolver.close()
