"""Running one ExecuteRequest: inputs in, the graph through the supervised worker, outputs to the object store.

One execution at a time per device: a second Execute while one runs (or while models are being prefetched) is
refused with EXECUTOR_BUSY (the scheduler must not double-book), and every Execute is refused with
EXECUTOR_DRAINING once the executor drains. Execute is idempotent per (execution id, attempt): a repeat replays the
recorded events of that attempt, following it live if it is still running. An Execute that arrives while the
executor is still starting (worker, preloading, warm-up) waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import mimetypes
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from comfymesh.common.v1 import execution_event_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2
from gpu_executor.engine import events
from gpu_executor.engine.errors import ValidationResult
from gpu_executor.events_proto import to_proto
from gpu_executor.io.inputs import InputSpec, materialize_inputs
from gpu_executor.model_tiers.state import PrefetchOutcome
from gpu_executor.worker.backend import ExecutionBackend
from gpu_executor.worker.child import Job
from gpu_executor.worker.supervisor import WorkerLost, failure_of
from service_runtime.errors import FieldViolation, Reason, ServiceError, invalid_argument, not_found, unavailable
from service_runtime.object_store import ObjectStore
from service_runtime.settings import Settings
from service_runtime.transport.graph_codec import graph_from_proto

REPLAY_ATTEMPTS_KEPT = 32
MAX_FIELD_VIOLATIONS = 50
STARTUP_WAIT_SECONDS = 600.0
logger = logging.getLogger(__name__)


@dataclass
class AttemptLog:
    """Every event of one attempt, for replay; `done` once the terminal event is in."""

    events: list[pb.ExecutionEvent] = field(default_factory=list)
    done: bool = False
    finished: bool = False  # counted as finished and the executor freed (just before the terminal event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


def _has_news(log: AttemptLog, seen: int) -> bool:
    return len(log.events) > seen or log.done


def _validate(request: executor_service_pb2.ExecuteRequest) -> None:
    violations = []
    if not request.execution_id:
        violations.append(FieldViolation("execution_id", "required"))
    if request.attempt < 1:
        violations.append(FieldViolation("attempt", "attempts start at 1"))
    if not request.output_prefix:
        violations.append(FieldViolation("output_prefix", "required"))
    if not request.HasField("graph") or not request.graph.nodes:
        violations.append(FieldViolation("graph", "required"))
    if violations:
        raise invalid_argument("the execute request is incomplete", *violations)


class ExecutionRunner:
    def __init__(self, settings: Settings, supervisor: ExecutionBackend, store: ObjectStore | None) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.store = store
        self.current: tuple[str, int] | None = None
        self.completed = 0
        self.prefetching = False
        self.draining = False
        self.started = asyncio.Event()  # the worker is up and warm-up and preloading are done
        self.startup_error: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._interrupted_early: set[tuple[str, int]] = set()
        self._logs: OrderedDict[tuple[str, int], AttemptLog] = OrderedDict()

    @property
    def busy(self) -> bool:
        return self.current is not None or self.prefetching

    def startup_finished(self, error: str | None = None) -> None:
        self.startup_error = error
        self.started.set()

    async def wait_started(self, limit: float = STARTUP_WAIT_SECONDS) -> None:
        """Returns once the executor has started; UNAVAILABLE when it could not."""
        try:
            await asyncio.wait_for(self.started.wait(), limit)
        except TimeoutError:
            raise unavailable("the executor is still starting") from None
        if self.startup_error is not None:
            raise unavailable(f"the executor failed to start: {self.startup_error}")

    async def wait_idle(self, limit: float) -> bool:
        """Waits until no execution runs (True), or `limit` seconds (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), limit)
        except TimeoutError:
            return False
        return True

    def _refuse_new_work(self) -> None:
        if self.draining:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.EXECUTOR_DRAINING,
                               "this executor is draining and takes no new work")
        if self.current is not None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.EXECUTOR_BUSY,
                               f"this executor is running execution {self.current[0]}",
                               {"running_execution_id": self.current[0]})
        if self.prefetching:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.EXECUTOR_BUSY,
                               "this executor is loading models (PrefetchModels)")

    async def prefetch(self, names: tuple[str, ...], tier: str) -> PrefetchOutcome:
        """Brings models to a tier in the worker; refused while an execution runs or the executor drains."""
        self._refuse_new_work()
        self.prefetching = True
        try:
            await self.wait_started()
            outcome = await self.supervisor.prefetch(names, tier)
        finally:
            self.prefetching = False
        if outcome.missing:
            raise not_found(f"no model named {', '.join(repr(n) for n in outcome.missing)} in the models directory, "
                            "the disk cache or the models bucket", Reason.MODEL_NOT_FOUND,
                            model_names=",".join(outcome.missing))
        if outcome.error:
            code = getattr(grpc.StatusCode, outcome.error_code, grpc.StatusCode.FAILED_PRECONDITION)
            reason = Reason(outcome.error_reason) if outcome.error_reason in Reason.__members__ \
                else Reason.MODEL_FILE_INVALID
            raise ServiceError(code, reason, f"loading the models failed: {outcome.error}")
        return outcome

    async def warm_up(self, prompt: Any) -> events.Event | WorkerLost | None:
        """Runs a graph once in the worker (at start, before the executor joins the fleet); outputs are dropped."""
        workdir = self.settings.home.resolve() / "executions" / "warm-up"
        dirs = {name: workdir / name for name in ("input", "output", "temp")}
        for directory in dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        job = Job(uuid.uuid4().hex, "warm-up", 1, prompt, dirs["output"], dirs["temp"], dirs["input"], {})
        final: events.Event | WorkerLost | None = None
        try:
            async for item in self.supervisor.run(job):
                if isinstance(item, (WorkerLost, *events.TERMINAL)):
                    final = item
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return final

    @property
    def outputs_bucket(self) -> str:
        return f"{self.settings.s3_bucket_prefix}-outputs"

    @property
    def inputs_bucket(self) -> str:
        return f"{self.settings.s3_bucket_prefix}-inputs"

    async def execute(self, request: executor_service_pb2.ExecuteRequest) -> AsyncIterator[pb.ExecutionEvent]:
        _validate(request)
        key = (request.execution_id, request.attempt)
        log = self._logs.get(key)
        if log is not None:  # a repeat of this attempt: replay (and follow) what it recorded
            async for event in self._follow(log):
                yield event
            return
        self._refuse_new_work()
        log = AttemptLog()
        self._logs[key] = log
        while len(self._logs) > REPLAY_ATTEMPTS_KEPT:
            self._logs.popitem(last=False)
        self.current = key
        self._idle.clear()
        task = asyncio.create_task(self._run(request, log))
        try:
            async for event in self._follow(log):
                yield event
        finally:
            if not task.done():
                # The caller went away: the attempt keeps running to its end (a repeat can pick it up).
                task.add_done_callback(lambda _t: None)

    async def _follow(self, log: AttemptLog) -> AsyncIterator[pb.ExecutionEvent]:
        sent = 0
        while True:
            async with log.changed:
                await log.changed.wait_for(functools.partial(_has_news, log, sent))
                batch = log.events[sent:]
                finished = log.done
            for event in batch:
                yield event
            sent += len(batch)
            if finished and sent == len(log.events):
                return

    async def _record(self, log: AttemptLog, event: pb.ExecutionEvent, *, final: bool = False) -> None:
        async with log.changed:
            log.events.append(event)
            log.done = log.done or final
            log.changed.notify_all()

    async def _run(self, request: executor_service_pb2.ExecuteRequest, log: AttemptLog) -> None:
        key = (request.execution_id, request.attempt)
        workdir = self.settings.home.resolve() / "executions" / request.execution_id / f"attempt-{request.attempt}"
        sequence = 0

        async def emit(event: events.Event | pb.ExecutionEvent, outputs: list[pb.OutputFile] | None = None,
                       final: bool = False) -> None:
            nonlocal sequence
            sequence += 1
            message = event if isinstance(event, pb.ExecutionEvent) else to_proto(
                event, execution_id=request.execution_id, attempt=request.attempt, sequence=sequence,
                now=time.time(), outputs=outputs)
            if isinstance(event, events.Failed) and isinstance(event.validation, ValidationResult):
                message.failed.error.details.append(_bad_request(event.validation))
            if final:
                # Free before the terminal event leaves: the dispatcher sends the next job as soon as it sees it.
                self._finish(key)
            await self._record(log, message, final=final)

        deadline_task: asyncio.Task[None] | None = None
        try:
            await self.wait_started()
            if key in self._interrupted_early:  # interrupted while the executor was still starting
                await emit(events.Cancelled(""), final=True)
                return
            prompt = graph_from_proto(request.graph)
            dirs = {name: workdir / name for name in ("input", "output", "temp")}
            for directory in dirs.values():
                directory.mkdir(parents=True, exist_ok=True)
            inputs = await materialize_inputs(
                [InputSpec.from_message(cast(Any, item)) for item in request.inputs], dirs["input"], store=self.store,
                inputs_bucket=self.inputs_bucket, max_inline_bytes=self.settings.max_inline_input_bytes,
                max_url_bytes=self.settings.max_url_input_bytes, url_timeout=self.settings.url_fetch_timeout_seconds,
                allow_private_urls=self.settings.allow_private_urls)
            if request.HasField("deadline"):
                deadline_task = asyncio.create_task(self._interrupt_at(request.deadline.ToNanoseconds() / 1e9))
            job = Job(uuid.uuid4().hex, request.execution_id, request.attempt, prompt, dirs["output"], dirs["temp"],
                      dirs["input"], inputs, tenant=request.tenant)
            async for item in self.supervisor.run(job):
                if isinstance(item, WorkerLost):
                    await emit(failure_of(item), final=True)
                    return
                if isinstance(item, events.Succeeded):
                    uploaded = await self._upload(request, item, dirs["output"], dirs["temp"])
                    await emit(item, uploaded, final=True)
                    return
                await emit(item, final=isinstance(item, events.TERMINAL))
                if isinstance(item, events.TERMINAL):
                    return
        except ServiceError as error:
            await emit(events.Failed(str(error.reason), error.message), final=True)
        except Exception as error:  # noqa: BLE001 - the stream must still end with a terminal event
            await emit(events.Failed("INTERNAL_ERROR", f"{type(error).__name__}: {error}"), final=True)
        finally:
            if deadline_task is not None:
                deadline_task.cancel()
            self._finish(key)
            async with log.changed:
                log.done = True
                log.changed.notify_all()
            shutil.rmtree(workdir, ignore_errors=True)

    def _finish(self, key: tuple[str, int]) -> None:
        """Marks the attempt finished (once): the executor takes the next job from here on."""
        log = self._logs.get(key)
        if log is None or log.finished:
            return
        log.finished = True
        self.completed += 1
        self.current = None if self.current == key else self.current
        if self.current is None:
            self._idle.set()

    async def _interrupt_at(self, epoch_seconds: float) -> None:
        await asyncio.sleep(max(0.0, epoch_seconds - time.time()))
        self.supervisor.interrupt()

    def interrupt(self, execution_id: str) -> bool:
        if self.current is None or (execution_id and execution_id != self.current[0]):
            return False
        if not self.started.is_set():
            self._interrupted_early.add(self.current)
        self.supervisor.interrupt()
        return True

    async def _upload(self, request: executor_service_pb2.ExecuteRequest, final: events.Succeeded,
                      output_dir: Path, temp_dir: Path) -> list[pb.OutputFile]:
        if not final.outputs:
            return []
        if self.store is None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.BACKEND_UNAVAILABLE,
                               "no object store is configured for outputs (COMFYMESH_S3_ENDPOINT)")
        await self.store.ensure_bucket(self.outputs_bucket)
        prefix = request.output_prefix.rstrip("/") + "/"
        files = []
        for ref in final.outputs:
            path = (output_dir if ref.type == "output" else temp_dir) / ref.subfolder / ref.filename
            if not path.is_file():
                continue
            digest, width, height = await asyncio.to_thread(_describe_file, path)
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            key = prefix + "/".join(p for p in (ref.type, ref.subfolder, ref.filename) if p)
            info = await self.store.put_file(self.outputs_bucket, key, str(path), content_type)
            files.append(pb.OutputFile(node_id=ref.node_id, filename=ref.filename, subfolder=ref.subfolder,
                                       type=ref.type, content_type=content_type, size_bytes=info.size,
                                       sha256=digest, width=width, height=height, object_key=key))
        return files


def _bad_request(result: ValidationResult) -> any_pb2.Any:
    """Each validation error as a field violation (the workflow service's field names), for the caller to show
    which node input is wrong."""
    violations = []
    for error in result.all_errors()[:MAX_FIELD_VIOLATIONS]:
        field_name = f'graph.nodes["{error.node_id}"]' if error.node_id else "graph"
        if error.node_id and error.input_name:
            field_name += f".inputs.{error.input_name}"
        description = f"{error.message}: {error.details}" if error.details else error.message
        violations.append(error_details_pb2.BadRequest.FieldViolation(field=field_name, description=description,
                                                                     reason=str(error.type).upper()))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
    return detail


def _describe_file(path: Path) -> tuple[str, int, int]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    width = height = 0
    from PIL import Image, UnidentifiedImageError

    with contextlib.suppress(UnidentifiedImageError, OSError), Image.open(path) as image:  # not an image: no size
        width, height = image.size
    return digest.hexdigest(), width, height
