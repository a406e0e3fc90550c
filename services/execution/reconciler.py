"""The backstop of durability: every unfinished execution row must have a job in the queue (or be running).

PostgreSQL is the record; Redis holds the queue. If Redis lost the job (restarted without persistence, flushed)
or a process died between writing a row and enqueueing it, the row would wait forever. Every sweep looks at the
unfinished rows not touched for a while and repairs the ones the queue does not know: re-enqueued (and, if it
was running, recorded as a retry), or ended the way the queue already decided (removed → cancelled,
dead-lettered/expired → failed).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio

from comfymesh.queue.v1 import queue_service_pb2 as qpb
from comfymesh.queue.v1 import queue_service_pb2_grpc as qgrpc
from service_runtime.errors import Reason, ServiceError
from service_runtime.errors.status import to_status_proto
from services.execution_store.cancellation import CancelFlags
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.jobs import job_of
from services.execution_store.lifecycle import ExecutionLifecycle
from services.execution_store.repository import ExecutionRepository

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, queue: qgrpc.QueueServiceAsyncStub, repository: ExecutionRepository,
                 lifecycle: ExecutionLifecycle, cancels: CancelFlags, *, quiet_seconds: float,
                 interval_seconds: float) -> None:
        self._queue = queue
        self._repository = repository
        self._lifecycle = lifecycle
        self._cancels = cancels
        self._quiet = quiet_seconds
        self._interval = interval_seconds

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            repaired = await self.sweep()
            if repaired:
                log.warning("reconciler repaired %d executions", repaired)

    async def sweep(self) -> int:
        horizon = datetime.now(UTC) - timedelta(seconds=self._quiet)
        repaired = 0
        for record in await self._repository.list_active(updated_before=horizon):
            if await self._repair(record):
                repaired += 1
        return repaired

    async def _repair(self, record: ExecutionRecord) -> bool:
        try:
            job = await self._queue.GetJob(qpb.GetJobRequest(job_id=record.id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return await self._requeue(record)
        if job.state in (qpb.JOB_STATE_QUEUED, qpb.JOB_STATE_LEASED):
            return False
        if job.state == qpb.JOB_STATE_REMOVED:
            reason = await self._cancels.reason(record.id) or "cancelled"
            return await self._lifecycle.cancel(record, record.attempt_count, reason)
        if job.state == qpb.JOB_STATE_EXPIRED:
            return await self._lifecycle.fail(record, record.attempt_count, to_status_proto(ServiceError(
                grpc.StatusCode.DEADLINE_EXCEEDED, Reason.QUEUE_DEADLINE_EXCEEDED,
                "the execution waited in the queue past its queue_timeout")))
        if job.state == qpb.JOB_STATE_DEAD_LETTERED:
            return await self._lifecycle.fail(record, record.attempt_count, to_status_proto(ServiceError(
                grpc.StatusCode.ABORTED, Reason.MAX_ATTEMPTS_EXCEEDED,
                f"gave up after {job.attempt} attempts")))
        # DONE while the row is unfinished: the dispatcher acknowledged without recording the end (it died in
        # between, or a bug): the job cannot be run again, so the row must not stay open.
        return await self._lifecycle.fail(record, record.attempt_count, to_status_proto(ServiceError(
            grpc.StatusCode.INTERNAL, Reason.EXECUTOR_LOST, "the job finished without a recorded result")))

    async def _requeue(self, record: ExecutionRecord) -> bool:
        try:
            await self._queue.EnqueueJob(qpb.EnqueueJobRequest(job=job_of(record)))
        except grpc.aio.AioRpcError as exc:
            log.warning("could not re-enqueue %s: %s", record.id, exc.details())
            return False
        if record.state is not ExecutionState.QUEUED:
            await self._lifecycle.retrying(record.id, record.attempt_count, to_status_proto(ServiceError(
                grpc.StatusCode.UNAVAILABLE, Reason.EXECUTOR_LOST, "the queue lost the running job; re-queued")))
        return True
