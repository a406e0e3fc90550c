"""The durable priority queue of executions, on Redis: strict priority, FIFO inside a priority, leases.

Redis layout (namespace `ns`, default "cm:q"; see `QueueKeys`):

- `{ns}:ready`      ZSET  queued job ids, score = (100 - priority) * 1e13 + fifo_ms, so ZPOPMIN leases the
                         highest priority first and, inside it, the oldest. `fifo_ms` is the enqueue time in ms,
                         made strictly increasing (a burst in one millisecond keeps its order), kept for life:
                         a retried or reprioritised job keeps its place by original enqueue time.
- `{ns}:job:{id}`  HASH  every field of a job (state, attempt, priority, tenant, classes, models, deadline_ms,
                         enqueue_ms, fifo_ms, vram, lease_id, consumer, lease_ms, lease_expire_ms, last_error);
                         finished jobs (DONE, DEAD_LETTERED, REMOVED, EXPIRED) expire after `finished_ttl_seconds`.
- `{ns}:leases`    ZSET  leased job ids by lease expiry (ms); the janitor re-queues the lapsed ones.
- `{ns}:deadlines` ZSET  queued job ids by deadline (ms), so a deadline sweep is O(expired).
- `{ns}:wake`      LIST  wake-up tokens: every enqueue pushes one, blocked lessees BLPOP it.
- `{ns}:paused`    STRING set while leasing is paused.
- `{ns}:waits`     LIST  the most recent queue waits (ms), newest first, capped at `wait_samples`.
- `{ns}:dead`      STREAM dead letters (fields `job` JSON, `error` JSON, `time_ms`), capped at ~`dead_letter_max`.
- `{ns}:outcomes`  STREAM see `outcomes_stream`.
- `{ns}:fifo`      STRING the last fifo_ms handed out.
- `{ns}:fleet`     HASH  `free`, `busy`: executor counts written by the execution service.

Every state change is one Lua script (services/queue/scripts.py), so enqueue and lease are one round trip each
and any number of replicas (and janitors) may run at once. Nothing here imports generated code.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
import redis.asyncio as redis
from prometheus_client import Gauge, Histogram
from redis.commands.core import AsyncScript

from service_runtime.errors import (
    FieldViolation,
    Reason,
    ServiceError,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
)
from service_runtime.ids import is_valid_id
from services.queue import scripts

DEFAULT_NAMESPACE = "cm:q"
MIN_PRIORITY, MAX_PRIORITY = -100, 100
FINISHED_TTL_SECONDS = 24 * 3600
DEAD_LETTER_MAX = 10_000
OUTCOMES_MAX = 100_000
SWEEP_BATCH = 200
LEASE_SCAN_LIMIT = 200  # queue heads examined by one lease call (expired ones are skipped and failed)


def outcomes_stream(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The Redis stream of the queue's own transitions: `{ns}:outcomes`, capped at about 100 000 entries.

    The queue appends one entry, in the same Lua script as the state change, whenever it moves a job on its own
    or ends it without an ACK, so a consumer (the execution service, updating PostgreSQL) never misses one:

    - a lease lapsed and the janitor queued the job again → state "QUEUED";
    - attempts ran out (a lapsed lease at the last attempt, or a RETRY at the last attempt) → "DEAD_LETTERED";
    - the job's deadline passed while it was queued (janitor sweep, or skipped at lease) → "EXPIRED".

    Fields (all strings, as Redis stores them):

    - `job_id`: the job (= execution) id;
    - `state`: "QUEUED" | "DEAD_LETTERED" | "EXPIRED" (the JobState name without its prefix);
    - `attempt`: deliveries so far, as a decimal integer;
    - `error`: JSON `{"code": <grpc status code int>, "reason": "<ErrorInfo reason>", "message": "..."}`:
      reason EXECUTOR_LOST (code 14 UNAVAILABLE) for a lapsed lease re-queued, MAX_ATTEMPTS_EXCEEDED (code of
      the last error) for a dead letter, QUEUE_DEADLINE_EXCEEDED (code 4 DEADLINE_EXCEEDED) for an expiry;
    - `last_error`: for DEAD_LETTERED, the JSON of the attempt's own error (same shape); empty otherwise.
    """
    return f"{namespace}:outcomes"


class JobState(StrEnum):
    QUEUED = "QUEUED"
    LEASED = "LEASED"
    DONE = "DONE"
    DEAD_LETTERED = "DEAD_LETTERED"
    REMOVED = "REMOVED"
    EXPIRED = "EXPIRED"


class CompletionOutcome(StrEnum):
    ACK = "ACK"
    RETRY = "RETRY"


@dataclass(frozen=True)
class JobError:
    """Why an attempt failed: the `google.rpc.Status` essentials."""

    code: int  # a grpc status code number
    reason: str
    message: str

    def to_json(self) -> str:
        return json.dumps({"code": self.code, "reason": self.reason, "message": self.message},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes | None) -> JobError | None:
        if not text:
            return None
        try:
            raw = json.loads(text)
        except ValueError:
            return JobError(grpc.StatusCode.UNKNOWN.value[0], "", str(text))
        if not isinstance(raw, dict):
            return None
        return cls(int(raw.get("code", 2) or 0), str(raw.get("reason", "")), str(raw.get("message", "")))


EXECUTOR_LOST_ERROR = JobError(grpc.StatusCode.UNAVAILABLE.value[0], Reason.EXECUTOR_LOST,
                               "lease expired: the dispatcher or executor stopped renewing it")
RETRY_WITHOUT_ERROR = JobError(grpc.StatusCode.UNKNOWN.value[0], "", "retry requested without an error")


@dataclass(frozen=True)
class JobSpec:
    """What the submitter gives: a job to enqueue."""

    job_id: str
    priority: int = 0
    tenant: str = ""
    required_node_classes: tuple[str, ...] = ()
    model_names: tuple[str, ...] = ()
    deadline: float | None = None  # epoch seconds
    vram_estimate_bytes: int = 0


@dataclass(frozen=True)
class Job:
    job_id: str
    state: JobState
    priority: int
    tenant: str
    required_node_classes: tuple[str, ...]
    model_names: tuple[str, ...]
    deadline: float | None  # epoch seconds
    attempt: int
    enqueue_time: float  # epoch seconds of the last (re)enqueue
    position: int  # jobs ahead of it while queued; 0 otherwise
    vram_estimate_bytes: int
    last_error: JobError | None = None
    lease_id: str = ""
    consumer: str = ""
    lease_expire_time: float | None = None


@dataclass(frozen=True)
class Lease:
    lease_id: str
    job: Job
    consumer: str
    expire_time: float  # epoch seconds


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str  # the stream entry id (the page cursor)
    job: Job
    last_error: JobError | None
    dead_letter_time: float


@dataclass(frozen=True)
class WaitPercentiles:
    samples: int
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True)
class QueueStats:
    depths: tuple[tuple[int, int], ...]  # (priority, depth), highest priority first, only levels with jobs
    queued_total: int
    oldest_age: float  # seconds; 0 when empty
    running: int
    recent_wait: WaitPercentiles
    executors_free: int
    executors_busy: int
    paused: bool
    dead_letters: int
    max_queue_size: int


@dataclass(frozen=True)
class SweepResult:
    requeued: tuple[str, ...] = ()
    dead_lettered: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return len(self.requeued) + len(self.dead_lettered) + len(self.expired)


@dataclass(frozen=True)
class QueueKeys:
    namespace: str

    def key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    @property
    def job_prefix(self) -> str:
        return self.key("job:")

    @property
    def wake(self) -> str:
        return self.key("wake")

    @property
    def paused(self) -> str:
        return self.key("paused")

    @property
    def dead(self) -> str:
        return self.key("dead")

    @property
    def fleet(self) -> str:
        return self.key("fleet")

    @property
    def all(self) -> list[str]:
        """KEYS of every script, in the order scripts.PRELUDE names them."""
        return [self.key("ready"), self.key("leases"), self.key("deadlines"), self.wake, self.paused,
                self.key("waits"), outcomes_stream(self.namespace), self.dead, self.key("fifo"), self.fleet]


# -- metrics ---------------------------------------------------------------------------------------------------

_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class QueueMetrics:
    depth: Gauge
    wait_time: Histogram


_metrics: QueueMetrics | None = None
_metrics_lock = threading.Lock()


def queue_metrics() -> QueueMetrics:
    """The process-wide queue metrics (created once: Prometheus refuses duplicate registrations)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = QueueMetrics(
                depth=Gauge("queue_depth", "Queued jobs per priority (updated by stats calls and janitor sweeps).",
                            ("priority",)),
                wait_time=Histogram("queue_wait_time_seconds", "Time a job waited in the queue before a lease.",
                                    buckets=_WAIT_BUCKETS),
            )
        return _metrics


# -- validation ------------------------------------------------------------------------------------------------


def check_job_id(job_id: str, field_path: str = "job_id") -> None:
    if not is_valid_id(job_id):
        raise invalid_argument(f"{field_path} must be an execution id (32 lowercase hex characters)",
                               FieldViolation(field_path, f"{job_id[:64]!r} is not an execution id", "INVALID_ID"))


def check_priority(priority: int, field_path: str = "priority") -> None:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise invalid_argument(f"{field_path} must be between {MIN_PRIORITY} and {MAX_PRIORITY}",
                               FieldViolation(field_path, f"{priority} is outside [{MIN_PRIORITY}, {MAX_PRIORITY}]",
                                              "OUT_OF_RANGE"))


def job_id_of_lease(lease_id: str) -> str | None:
    """A lease id is `{job_id}.{attempt}.{random}`; None when it is not one."""
    job_id, _, rest = lease_id.partition(".")
    return job_id if is_valid_id(job_id) and rest else None


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- decoding script replies -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(flat: Sequence[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _ms(value: str | None) -> float:
    return int(value or 0) / 1000.0


def _job(fields: dict[str, str], position: int = -1) -> Job:
    deadline_ms = int(fields.get("deadline_ms") or 0)
    expire_ms = int(fields.get("lease_expire_ms") or 0)
    state = JobState(fields["state"])
    return Job(
        job_id=fields["id"],
        state=state,
        priority=int(fields.get("priority") or 0),
        tenant=fields.get("tenant", ""),
        required_node_classes=tuple(json.loads(fields.get("classes") or "[]")),
        model_names=tuple(json.loads(fields.get("models") or "[]")),
        deadline=deadline_ms / 1000.0 if deadline_ms else None,
        attempt=int(fields.get("attempt") or 0),
        enqueue_time=_ms(fields.get("enqueue_ms")),
        position=max(position, 0) if state == JobState.QUEUED else 0,
        vram_estimate_bytes=int(fields.get("vram") or 0),
        last_error=JobError.from_json(fields.get("last_error")),
        lease_id=fields.get("lease_id", ""),
        consumer=fields.get("consumer", ""),
        lease_expire_time=expire_ms / 1000.0 if expire_ms else None,
    )


def _lease_of(job: Job) -> Lease:
    return Lease(lease_id=job.lease_id, job=job, consumer=job.consumer, expire_time=job.lease_expire_time or 0.0)


def _lease_lost(lease_id: str) -> ServiceError:
    return failed_precondition(f"lease {lease_id} is not held: it lapsed and the job was queued again, the job was "
                               "completed, or another consumer holds it", Reason.LEASE_LOST, lease_id=lease_id)


def _job_not_found(job_id: str) -> ServiceError:
    return not_found(f"job {job_id} not found", job_id=job_id)


def _not_queued(job: Job) -> ServiceError:
    return failed_precondition(f"job {job.job_id} is {job.state}, not QUEUED", Reason.JOB_NOT_QUEUED,
                               job_id=job.job_id, state=str(job.state))


# -- the queue -------------------------------------------------------------------------------------------------


@dataclass
class _Scripts:
    enqueue: AsyncScript
    lease: AsyncScript
    release: AsyncScript
    renew: AsyncScript
    complete: AsyncScript
    get: AsyncScript
    remove: AsyncScript
    reprioritize: AsyncScript
    list_queued: AsyncScript
    stats: AsyncScript
    resume: AsyncScript
    sweep: AsyncScript


class JobQueue:
    """The queue's domain API. Blocking waits (lease) block in Redis (BLPOP), never poll, and are cancellable."""

    def __init__(self, client: redis.Redis, *, namespace: str = DEFAULT_NAMESPACE, max_queue_size: int = 10_000,
                 lease_seconds: float = 30.0, max_attempts: int = 3, wait_samples: int = 1000,
                 finished_ttl_seconds: int = FINISHED_TTL_SECONDS, dead_letter_max: int = DEAD_LETTER_MAX,
                 max_blocking_waits: int = 32) -> None:
        if lease_seconds <= 0 or max_attempts < 1 or wait_samples < 1 or max_queue_size < 0:
            raise ValueError("lease_seconds > 0, max_attempts >= 1, wait_samples >= 1 and max_queue_size >= 0")
        self._redis = client
        self.namespace = namespace
        self.keys = QueueKeys(namespace)
        self.max_queue_size = max_queue_size
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.wait_samples = wait_samples
        self._common: list[str | int] = [self.keys.job_prefix, finished_ttl_seconds, max_attempts, dead_letter_max,
                                         OUTCOMES_MAX]
        # A blocked lessee holds a pooled connection for its whole wait: bound them, the pool is shared.
        self._blocking = asyncio.Semaphore(max_blocking_waits)
        self._orphans: set[asyncio.Task[Any]] = set()
        self._metrics = queue_metrics()
        self._depth_labels: set[str] = set()
        register = client.register_script
        self._scripts = _Scripts(
            enqueue=register(scripts.ENQUEUE), lease=register(scripts.LEASE), release=register(scripts.RELEASE),
            renew=register(scripts.RENEW), complete=register(scripts.COMPLETE), get=register(scripts.GET),
            remove=register(scripts.REMOVE), reprioritize=register(scripts.REPRIORITIZE),
            list_queued=register(scripts.LIST_QUEUED), stats=register(scripts.STATS),
            resume=register(scripts.RESUME), sweep=register(scripts.SWEEP),
        )

    @property
    def outcomes_stream(self) -> str:
        return outcomes_stream(self.namespace)

    async def _run(self, script: AsyncScript, *args: str | int | float) -> Any:
        return await script(keys=self.keys.all, args=[*self._common, *args])

    @staticmethod
    def _reply(reply: Sequence[Any]) -> tuple[str, Job | None]:
        """A {status, position, fields, extra} reply: the status and the job (None when there is none)."""
        status, position, flat = _text(reply[0]), int(reply[1]), reply[2]
        return status, (_job(_fields(flat), position) if flat else None)

    # -- enqueue -----------------------------------------------------------------------------------------------

    async def enqueue(self, spec: JobSpec) -> Job:
        """Queues a job; idempotent per job id (a QUEUED or LEASED job comes back unchanged)."""
        check_job_id(spec.job_id, "job.job_id")
        check_priority(spec.priority, "job.priority")
        if spec.vram_estimate_bytes < 0:
            raise invalid_argument("job.vram_estimate_bytes must not be negative",
                                   FieldViolation("job.vram_estimate_bytes", "negative", "NEGATIVE"))
        deadline_ms = 0 if spec.deadline is None else max(1, int(spec.deadline * 1000))
        reply = await self._run(self._scripts.enqueue, spec.job_id, spec.priority, spec.tenant,
                                json.dumps(list(spec.required_node_classes)), json.dumps(list(spec.model_names)),
                                deadline_ms, spec.vram_estimate_bytes, self.max_queue_size)
        status, job = self._reply(reply)
        if status == "full":
            raise resource_exhausted(f"the queue is full ({self.max_queue_size} jobs queued); retry later",
                                     Reason.QUEUE_FULL, retry_after_seconds=5.0,
                                     max_queue_size=str(self.max_queue_size))
        assert job is not None
        if status == "finished":
            raise _not_queued(job)
        return job

    # -- lease -------------------------------------------------------------------------------------------------

    async def lease(self, consumer: str, *, wait: float = 0.0, lease_seconds: float | None = None) -> Lease | None:
        """Leases the best queued job, blocking up to `wait` seconds for one; None when none came.

        While the queue is paused nothing is leased: the call blocks (in Redis) until it resumes or `wait` ends.
        """
        if not consumer:
            raise invalid_argument("consumer is required", FieldViolation("consumer", "empty", "REQUIRED"))
        lease_ms = max(1, round((lease_seconds or self.lease_seconds) * 1000))
        loop = asyncio.get_running_loop()
        until = loop.time() + max(wait, 0.0)
        leased = await self._try_lease(consumer, lease_ms)
        if leased is not None or wait <= 0:
            return leased
        try:
            async with asyncio.timeout(wait):
                await self._blocking.acquire()
        except TimeoutError:
            return None
        try:
            while True:
                leased = await self._try_lease(consumer, lease_ms)
                remaining = until - loop.time()
                if leased is not None or remaining <= 0.001:
                    return leased
                # Blocks in Redis until an enqueue (or a resume, or a re-queue) pushes a wake token.
                await self._redis.blpop([self.keys.wake], timeout=remaining)
        finally:
            self._blocking.release()

    async def _try_lease(self, consumer: str, lease_ms: int) -> Lease | None:
        while True:
            call = asyncio.ensure_future(self._run(self._scripts.lease, consumer, lease_ms, secrets.token_hex(6),
                                                   self.wait_samples, LEASE_SCAN_LIMIT))
            try:
                reply = await asyncio.shield(call)
            except asyncio.CancelledError:
                # The script may still lease a job whose reply nobody reads: hand it back when it does.
                call.add_done_callback(self._release_orphan)
                raise
            status = _text(reply[0])
            if status == "again":
                continue
            if status != "ok":
                return None
            job = _job(_fields(reply[2]))
            self._metrics.wait_time.observe(int(reply[1]) / 1000.0)
            return _lease_of(job)

    def _release_orphan(self, call: asyncio.Future[Any]) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        reply = call.result()
        if _text(reply[0]) != "ok":
            return
        job = _job(_fields(reply[2]))
        task = asyncio.ensure_future(self._run(self._scripts.release, job.job_id, job.lease_id, job.consumer))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    # -- lease holders -----------------------------------------------------------------------------------------

    async def renew(self, lease_id: str, consumer: str) -> Lease:
        """Extends a lease by its duration; LEASE_LOST when it is no longer held."""
        job_id = job_id_of_lease(lease_id)
        if job_id is None:
            raise _lease_lost(lease_id)
        status, job = self._reply(await self._run(self._scripts.renew, job_id, lease_id, consumer))
        if status != "ok" or job is None:
            raise _lease_lost(lease_id)
        return _lease_of(job)

    async def complete(self, lease_id: str, consumer: str, outcome: CompletionOutcome,
                       error: JobError | None = None) -> Job:
        """ACK → DONE; RETRY → QUEUED again (same place in its level) or DEAD_LETTERED when attempts ran out."""
        job_id = job_id_of_lease(lease_id)
        if job_id is None:
            raise _lease_lost(lease_id)
        error_json = (error or RETRY_WITHOUT_ERROR).to_json() if outcome == CompletionOutcome.RETRY else ""
        status, job = self._reply(await self._run(self._scripts.complete, job_id, lease_id, consumer,
                                                  str(outcome), error_json))
        if status != "ok" or job is None:
            raise _lease_lost(lease_id)
        return job

    # -- jobs --------------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        check_job_id(job_id)
        status, job = self._reply(await self._run(self._scripts.get, job_id))
        if status == "notfound" or job is None:
            raise _job_not_found(job_id)
        return job

    async def remove(self, job_id: str) -> Job:
        """QUEUED → REMOVED (a REMOVED job is returned as is); other states → JOB_NOT_QUEUED."""
        check_job_id(job_id)
        status, job = self._reply(await self._run(self._scripts.remove, job_id))
        if status == "notfound" or job is None:
            raise _job_not_found(job_id)
        if status == "notqueued":
            raise _not_queued(job)
        return job

    async def reprioritize(self, job_id: str, priority: int) -> Job:
        """Moves a QUEUED job to another level, where it keeps its place by original enqueue time."""
        check_job_id(job_id)
        check_priority(priority)
        status, job = self._reply(await self._run(self._scripts.reprioritize, job_id, priority))
        if status == "notfound" or job is None:
            raise _job_not_found(job_id)
        if status == "notqueued":
            raise _not_queued(job)
        return job

    async def list_queued(self, limit: int, after: str | None = None) -> tuple[list[Job], str | None]:
        """Queued jobs in run order: a page of at most `limit` and the cursor of the next page (None at the end).

        The cursor is the last job's ready-set score, unique by construction (fifo_ms never repeats).
        """
        position, more, items = await self._run(self._scripts.list_queued, after or "", max(1, limit))
        jobs = [_job(_fields(flat), int(position) + index) for index, (_, flat) in enumerate(items)]
        cursor = _text(items[-1][0]) if int(more) and items else None
        return jobs, cursor

    async def list_dead_letters(self, limit: int, before: str | None = None
                                ) -> tuple[list[DeadLetter], str | None]:
        """Dead letters newest first: a page and the cursor (a stream id) of the next one (None at the end)."""
        entries = await self._redis.xrevrange(self.keys.dead, max=f"({before}" if before else "+", min="-",
                                              count=max(1, limit) + 1) or []
        letters = []
        for entry_id, raw in entries[:limit]:
            values = {_text(k): _text(v) for k, v in (raw or {}).items()}
            letters.append(DeadLetter(entry_id=_text(entry_id), job=_job(json.loads(values["job"])),
                                      last_error=JobError.from_json(values.get("error")),
                                      dead_letter_time=_ms(values.get("time_ms"))))
        return letters, (letters[-1].entry_id if len(entries) > limit and letters else None)

    # -- the queue as a whole ----------------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        reply = await self._run(self._scripts.stats, self.wait_samples)
        now_ms, levels, oldest_ms = int(reply[0]), reply[1], int(reply[2])
        depths = tuple((int(priority), int(depth)) for priority, depth in levels)
        waits = sorted(int(v) / 1000.0 for v in reply[9])
        stats = QueueStats(
            depths=depths,
            queued_total=int(reply[3]),
            oldest_age=max(0.0, (now_ms - oldest_ms) / 1000.0) if oldest_ms >= 0 else 0.0,
            running=int(reply[4]),
            recent_wait=WaitPercentiles(len(waits), percentile(waits, 0.5), percentile(waits, 0.9),
                                        percentile(waits, 0.99)),
            executors_free=int(reply[7] or 0),
            executors_busy=int(reply[8] or 0),
            paused=bool(int(reply[5])),
            dead_letters=int(reply[6]),
            max_queue_size=self.max_queue_size,
        )
        self._export_depths(depths)
        return stats

    def _export_depths(self, depths: tuple[tuple[int, int], ...]) -> None:
        current = {str(priority): depth for priority, depth in depths}
        for gone in self._depth_labels - current.keys():
            self._metrics.depth.labels(gone).set(0)
        for label, depth in current.items():
            self._metrics.depth.labels(label).set(depth)
        self._depth_labels |= current.keys()

    async def pause(self) -> QueueStats:
        await self._redis.set(self.keys.paused, b"1")
        return await self.stats()

    async def resume(self) -> QueueStats:
        await self._run(self._scripts.resume)
        return await self.stats()

    async def sweep(self) -> SweepResult:
        """The janitor's work: lapsed leases re-queued (or dead-lettered), overdue queued jobs expired."""
        requeued: list[str] = []
        dead: list[str] = []
        expired: list[str] = []
        while True:
            batch = await self._run(self._scripts.sweep, SWEEP_BATCH, EXECUTOR_LOST_ERROR.to_json())
            lists = [[_text(v) for v in part] for part in batch]
            requeued += lists[0]
            dead += lists[1]
            expired += lists[2]
            if len(lists[0]) + len(lists[1]) < SWEEP_BATCH and len(lists[2]) < SWEEP_BATCH:
                return SweepResult(tuple(requeued), tuple(dead), tuple(expired))


__all__ = [
    "DEFAULT_NAMESPACE",
    "EXECUTOR_LOST_ERROR",
    "CompletionOutcome",
    "DeadLetter",
    "Job",
    "JobError",
    "JobQueue",
    "JobSpec",
    "JobState",
    "Lease",
    "QueueKeys",
    "QueueStats",
    "SweepResult",
    "WaitPercentiles",
    "check_job_id",
    "check_priority",
    "outcomes_stream",
    "queue_metrics",
]
