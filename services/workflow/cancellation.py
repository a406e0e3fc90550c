"""CancelExecution: a queued execution is removed from the queue and ends CANCELLED at once; a running one is
interrupted on its executor and ends CANCELLED when the executor reports it; a finished one is an error.

The cancel flag is set first, so a dispatcher that leased the job a moment ago cancels it before it reaches an
executor; the call then waits briefly for the terminal state so callers usually get the final answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import grpc.aio

from comfymesh.execution.v1 import execution_service_pb2 as epb
from comfymesh.execution.v1 import execution_service_pb2_grpc as egrpc
from comfymesh.queue.v1 import queue_service_pb2 as qpb
from comfymesh.queue.v1 import queue_service_pb2_grpc as qgrpc
from service_runtime.errors import Reason, failed_precondition
from services.execution_store.cancellation import CancelFlags
from services.execution_store.domain import ExecutionRecord
from services.execution_store.events import EventFollower
from services.execution_store.lifecycle import ExecutionLifecycle
from services.execution_store.repository import ExecutionRepository
from services.workflow.queries import ExecutionQueries

DEFAULT_REASON = "cancelled by the caller"
MAX_REASON_LENGTH = 512


class ExecutionCanceller:
    def __init__(self, queries: ExecutionQueries, repository: ExecutionRepository, lifecycle: ExecutionLifecycle,
                 cancels: CancelFlags, queue: qgrpc.QueueServiceAsyncStub,
                 execution: egrpc.ExecutionServiceAsyncStub, follower: EventFollower,
                 wait_seconds: float = 10.0) -> None:
        self._queries = queries
        self._repository = repository
        self._lifecycle = lifecycle
        self._cancels = cancels
        self._queue = queue
        self._execution = execution
        self._follower = follower
        self._wait = wait_seconds

    async def cancel(self, tenant: str, execution_id: str, reason: str = "") -> ExecutionRecord:
        record = await self._queries.get(tenant, execution_id)
        if record.state.terminal:
            raise failed_precondition(f"execution {execution_id} already finished ({record.state})",
                                      Reason.EXECUTION_FINISHED, execution_id=execution_id,
                                      state=str(record.state))
        reason = (reason or DEFAULT_REASON)[:MAX_REASON_LENGTH]
        await self._cancels.request(execution_id, reason)
        with self._follower.subscribe(execution_id) as wake:
            try:
                await self._queue.RemoveJob(qpb.RemoveJobRequest(job_id=execution_id))
                removed = True
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    raise
                # NOT_FOUND: the queue lost it (the reconciler would re-enqueue it): cancel the row directly.
                removed = exc.code() == grpc.StatusCode.NOT_FOUND
            if removed:
                await self._lifecycle.cancel(record, record.attempt_count, reason)
            else:
                await self._execution.InterruptExecution(
                    epb.InterruptExecutionRequest(execution_id=execution_id, reason=reason))
                await self._await_end(execution_id, wake)
        return await self._queries.get(tenant, execution_id)

    async def _await_end(self, execution_id: str, wake: asyncio.Event) -> None:
        deadline = time.monotonic() + self._wait
        while time.monotonic() < deadline:
            record = await self._repository.get_internal(execution_id)
            if record is None or record.state.terminal:
                return
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(0.5, max(0.0, deadline - time.monotonic())))
