"""The worker process: builds the engine once (models stay loaded in this process), then runs one job at a time and
sends every engine event back over the pipe. A crash, an out-of-memory kill or a hang here never takes the gRPC
server down: the supervisor notices, ends the job with a typed retryable error, and starts a fresh worker."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True)
class WorkerConfig:
    custom_node_dirs: tuple[Path, ...] = ()
    models_dir: Path | None = None
    tokenizer_dir: Path | None = None


class _PipeSink:
    def __init__(self, conn: Connection, token: str) -> None:
        self._conn = conn
        self._token = token

    def emit(self, event: Any) -> None:
        self._conn.send(("event", self._token, event))


def main(conn: Connection, interrupt: Any, config: WorkerConfig) -> None:
    """Entry point of the child process (multiprocessing 'spawn')."""
    from gpu_executor.diffusion.text.conditioning import configure_tokenizer_dir
    from gpu_executor.engine import runtime
    from gpu_executor.engine.engine import Engine, ExecutionRequest
    from gpu_executor.engine.registry import build_registry

    logging.basicConfig(level=logging.WARNING)
    runtime.bind_models_root(config.models_dir)
    configure_tokenizer_dir(config.tokenizer_dir)
    engine = Engine(build_registry(list(config.custom_node_dirs)))
    conn.send(("ready", "", engine.registry.catalog_hash()))
    # The interrupt flag is a multiprocessing.Event shared with the supervisor; the engine wants a threading.Event
    # interface, which multiprocessing.Event provides (is_set/set/clear).
    flag: threading.Event = interrupt
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        job: Job = message
        flag.clear()
        request = ExecutionRequest(job.execution_id, job.prompt, job.output_dir, job.temp_dir, job.input_dir,
                                   dict(job.inputs))
        engine.execute(request, _PipeSink(conn, job.token), flag)
        conn.send(("done", job.token, None))
