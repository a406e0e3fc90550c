"""QueueService over gRPC: request validation and proto ⇄ domain conversion around `JobQueue`."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import any_pb2, duration_pb2, empty_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from service_runtime.errors import ERROR_DOMAIN, FieldViolation, invalid_argument
from service_runtime.pagination import PageSize, PageTokenCodec
from services.queue.job_queue import (
    CompletionOutcome,
    DeadLetter,
    Job,
    JobError,
    JobQueue,
    JobSpec,
    Lease,
    QueueStats,
    check_job_id,
    check_priority,
)

QUEUED_PAGE_SIZE = PageSize(default=100, maximum=1000)
DEAD_LETTER_PAGE_SIZE = PageSize(default=100, maximum=1000)
MAX_WAIT_SECONDS = 60.0  # a longer LeaseJob wait is coerced down (proxies and clients time out idle calls)
MAX_LEASE_SECONDS = 24 * 3600.0
MAX_CONSUMER_LENGTH = 256
MAX_NAME_LENGTH = 512

Context = grpc.aio.ServicerContext[Any, Any]

_OUTCOMES = {
    queue_service_pb2.COMPLETION_OUTCOME_ACK: CompletionOutcome.ACK,
    queue_service_pb2.COMPLETION_OUTCOME_RETRY: CompletionOutcome.RETRY,
}


# -- proto ⇄ domain --------------------------------------------------------------------------------------------


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _seconds(duration: duration_pb2.Duration, field_path: str) -> float:
    if duration.seconds < 0 or duration.nanos < 0 or duration.nanos >= 1_000_000_000:
        raise invalid_argument(f"{field_path} must be a non-negative duration",
                               FieldViolation(field_path, "negative or malformed duration", "NEGATIVE_DURATION"))
    return float(duration.seconds) + duration.nanos / 1e9


def job_to_proto(job: Job) -> queue_service_pb2.Job:
    message = queue_service_pb2.Job(
        job_id=job.job_id, priority=job.priority, tenant=job.tenant,
        required_node_classes=job.required_node_classes, model_names=job.model_names,
        state=queue_service_pb2.JobState.Value(f"JOB_STATE_{job.state}"), attempt=job.attempt,
        position=job.position, vram_estimate_bytes=job.vram_estimate_bytes,
    )
    if job.deadline is not None:
        message.deadline.CopyFrom(_timestamp(job.deadline))
    if job.enqueue_time:
        message.enqueue_time.CopyFrom(_timestamp(job.enqueue_time))
    return message


def lease_to_proto(lease: Lease) -> queue_service_pb2.Lease:
    return queue_service_pb2.Lease(lease_id=lease.lease_id, job=job_to_proto(lease.job), consumer=lease.consumer,
                                   expire_time=_timestamp(lease.expire_time))


def error_to_status(error: JobError) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    return status_pb2.Status(code=error.code, message=error.message, details=[detail] if error.reason else [])


def error_from_status(status: status_pb2.Status) -> JobError:
    reason = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            break
    return JobError(code=int(status.code), reason=reason, message=str(status.message))


def dead_letter_to_proto(letter: DeadLetter) -> queue_service_pb2.DeadLetter:
    message = queue_service_pb2.DeadLetter(job=job_to_proto(letter.job),
                                           dead_letter_time=_timestamp(letter.dead_letter_time))
    if letter.last_error is not None:
        message.last_error.CopyFrom(error_to_status(letter.last_error))
    return message


def stats_to_proto(stats: QueueStats) -> queue_service_pb2.QueueStats:
    wait = stats.recent_wait
    return queue_service_pb2.QueueStats(
        depths=[queue_service_pb2.PriorityDepth(priority=p, depth=d) for p, d in stats.depths],
        queued_total=stats.queued_total, oldest_age=_duration(stats.oldest_age), running=stats.running,
        recent_wait=queue_service_pb2.WaitTimePercentiles(samples=wait.samples, p50=_duration(wait.p50),
                                                          p90=_duration(wait.p90), p99=_duration(wait.p99)),
        executors_free=stats.executors_free, executors_busy=stats.executors_busy, paused=stats.paused,
        dead_letters=stats.dead_letters, max_queue_size=stats.max_queue_size,
    )


def _names(values: Any, field_path: str) -> tuple[str, ...]:
    names = tuple(str(v) for v in values)
    for index, name in enumerate(names):
        if not name or len(name) > MAX_NAME_LENGTH:
            raise invalid_argument(f"{field_path} entries must be non-empty names",
                                   FieldViolation(f"{field_path}[{index}]", "empty or too long", "INVALID_NAME"))
    return names


def spec_from_proto(job: queue_service_pb2.Job) -> JobSpec:
    """The submitter's fields of a Job; OUTPUT_ONLY fields (state, attempt, enqueue_time, position) are ignored."""
    check_job_id(job.job_id, "job.job_id")
    check_priority(job.priority, "job.priority")
    if job.vram_estimate_bytes < 0:
        raise invalid_argument("job.vram_estimate_bytes must not be negative",
                               FieldViolation("job.vram_estimate_bytes", f"{job.vram_estimate_bytes} < 0", "NEGATIVE"))
    deadline: float | None = None
    if job.HasField("deadline"):
        if job.deadline.seconds <= 0 or not 0 <= job.deadline.nanos < 1_000_000_000:
            raise invalid_argument("job.deadline must be a time after the epoch",
                                   FieldViolation("job.deadline", "not a valid timestamp", "INVALID_TIMESTAMP"))
        deadline = job.deadline.seconds + job.deadline.nanos / 1e9
    return JobSpec(job_id=job.job_id, priority=job.priority, tenant=job.tenant,
                   required_node_classes=_names(job.required_node_classes, "job.required_node_classes"),
                   model_names=_names(job.model_names, "job.model_names"), deadline=deadline,
                   vram_estimate_bytes=job.vram_estimate_bytes)


def _require(value: str, field_path: str, limit: int = MAX_CONSUMER_LENGTH) -> None:
    if not value:
        raise invalid_argument(f"{field_path} is required", FieldViolation(field_path, "empty", "REQUIRED"))
    if len(value) > limit:
        raise invalid_argument(f"{field_path} is too long",
                               FieldViolation(field_path, f"longer than {limit} characters", "TOO_LONG"))


class QueueServicer(queue_service_pb2_grpc.QueueServiceServicer):
    """The QueueService contract on top of `JobQueue`. Errors are `ServiceError`s (typed by the interceptors)."""

    def __init__(self, queue: JobQueue, tokens: PageTokenCodec) -> None:
        self._queue = queue
        self._tokens = tokens

    async def EnqueueJob(self, request: queue_service_pb2.EnqueueJobRequest, context: Context
                         ) -> queue_service_pb2.Job:
        if not request.HasField("job"):
            raise invalid_argument("job is required", FieldViolation("job", "missing", "REQUIRED"))
        return job_to_proto(await self._queue.enqueue(spec_from_proto(request.job)))

    async def LeaseJob(self, request: queue_service_pb2.LeaseJobRequest, context: Context
                       ) -> queue_service_pb2.LeaseJobResponse:
        _require(request.consumer, "consumer")
        wait = min(_seconds(request.wait, "wait"), MAX_WAIT_SECONDS)
        lease_seconds = _seconds(request.lease_duration, "lease_duration")
        if lease_seconds > MAX_LEASE_SECONDS:
            raise invalid_argument("lease_duration is longer than a day (renew the lease instead)",
                                   FieldViolation("lease_duration", f"{lease_seconds:.0f}s > 86400s", "TOO_LONG"))
        lease = await self._queue.lease(request.consumer, wait=wait, lease_seconds=lease_seconds or None)
        if lease is None:
            return queue_service_pb2.LeaseJobResponse()
        return queue_service_pb2.LeaseJobResponse(lease=lease_to_proto(lease))

    async def RenewLease(self, request: queue_service_pb2.RenewLeaseRequest, context: Context
                         ) -> queue_service_pb2.Lease:
        _require(request.lease_id, "lease_id")
        _require(request.consumer, "consumer")
        return lease_to_proto(await self._queue.renew(request.lease_id, request.consumer))

    async def CompleteJob(self, request: queue_service_pb2.CompleteJobRequest, context: Context
                          ) -> queue_service_pb2.Job:
        _require(request.lease_id, "lease_id")
        _require(request.consumer, "consumer")
        outcome = _OUTCOMES.get(request.outcome)
        if outcome is None:
            raise invalid_argument("outcome must be ACK or RETRY",
                                   FieldViolation("outcome", f"{request.outcome} is not ACK or RETRY", "REQUIRED"))
        error = error_from_status(request.error) if request.HasField("error") else None
        return job_to_proto(await self._queue.complete(request.lease_id, request.consumer, outcome, error))

    async def GetJob(self, request: queue_service_pb2.GetJobRequest, context: Context) -> queue_service_pb2.Job:
        return job_to_proto(await self._queue.get(request.job_id))

    async def RemoveJob(self, request: queue_service_pb2.RemoveJobRequest, context: Context) -> empty_pb2.Empty:
        await self._queue.remove(request.job_id)
        return empty_pb2.Empty()

    async def ListQueuedJobs(self, request: queue_service_pb2.ListQueuedJobsRequest, context: Context
                             ) -> queue_service_pb2.ListQueuedJobsResponse:
        size = QUEUED_PAGE_SIZE.resolve(request.page_size)
        query = {"list": "queued", "ns": self._queue.namespace}
        cursor = self._tokens.decode(request.page_token, query)
        jobs, after = await self._queue.list_queued(size, str(cursor["after"]) if cursor else None)
        token = self._tokens.encode({"after": after}, query) if after else ""
        return queue_service_pb2.ListQueuedJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=token)

    async def UpdateJobPriority(self, request: queue_service_pb2.UpdateJobPriorityRequest, context: Context
                                ) -> queue_service_pb2.Job:
        return job_to_proto(await self._queue.reprioritize(request.job_id, request.priority))

    async def GetQueueStats(self, request: queue_service_pb2.GetQueueStatsRequest, context: Context
                            ) -> queue_service_pb2.QueueStats:
        return stats_to_proto(await self._queue.stats())

    async def PauseQueue(self, request: queue_service_pb2.PauseQueueRequest, context: Context
                         ) -> queue_service_pb2.QueueStats:
        return stats_to_proto(await self._queue.pause())

    async def ResumeQueue(self, request: queue_service_pb2.ResumeQueueRequest, context: Context
                          ) -> queue_service_pb2.QueueStats:
        return stats_to_proto(await self._queue.resume())

    async def ListDeadLetters(self, request: queue_service_pb2.ListDeadLettersRequest, context: Context
                              ) -> queue_service_pb2.ListDeadLettersResponse:
        size = DEAD_LETTER_PAGE_SIZE.resolve(request.page_size)
        query = {"list": "dead_letters", "ns": self._queue.namespace}
        cursor = self._tokens.decode(request.page_token, query)
        letters, before = await self._queue.list_dead_letters(size, str(cursor["before"]) if cursor else None)
        token = self._tokens.encode({"before": before}, query) if before else ""
        return queue_service_pb2.ListDeadLettersResponse(dead_letters=[dead_letter_to_proto(d) for d in letters],
                                                         next_page_token=token)
