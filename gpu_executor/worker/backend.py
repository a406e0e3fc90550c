"""What the executor needs from whatever runs its graphs: the built-in engine's supervised worker process
(`WorkerSupervisor`) or a ComfyUI server it starts or attaches to (`gpu_executor.comfyui.backend.ComfyUIBackend`).

ExecutionRunner, the servicer and the app talk to this interface only; `app.py` picks the implementation from
`COMFYMESH_EXECUTOR_ENGINE`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from gpu_executor.engine.events import Event
from gpu_executor.model_tiers.state import CacheState, PrefetchOutcome
from gpu_executor.worker.child import Job, Ready
from gpu_executor.worker.supervisor import WorkerLost


class ExecutionBackend(Protocol):
    """One job at a time; every job's stream ends with exactly one terminal event or a `WorkerLost`."""

    ready: Ready | None  # the catalog (ComfyUI /object_info shape) and its hash, once started
    catalog_hash: str
    restarts: int  # how often the engine process was replaced
    on_state: Callable[[CacheState], None]  # hears every model cache report
    on_worker_lost: Callable[[], None]  # hears that the engine process (and what it held) is gone

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def starting(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def run(self, job: Job) -> AsyncIterator[Event | WorkerLost]: ...

    def interrupt(self) -> None: ...

    async def prefetch(self, names: tuple[str, ...], tier: str) -> PrefetchOutcome: ...

    async def ensure_running(self) -> None: ...

    async def refresh_catalog(self) -> bool | None:
        """Lists the catalog again when idle (model folders change at run time): True when it changed, None when
        skipped because a job or a prefetch holds the engine (ask again later)."""
        ...
