"""The dispatcher: leases queued jobs, places each on a free executor, relays its events, and settles the lease.

One dispatcher runs in every execution-service replica, with a consumer name of its own. Replicas never
double-dispatch: the queue hands a job to one lease holder, and an executor is booked with a reservation (SET NX in
Redis) before `Execute` is called. Each job is driven by its own task:

1. load the execution row (the record); drop jobs whose execution is gone or already finished, and honour a
   cancel that arrived while the job was queued;
2. wait for a capable free executor (placement.py), reserve it, and call `Execute` with the attempt's output
   prefix and run deadline, renewing the lease (and the reservation) every third of the lease time;
3. relay every event to the execution's event stream; `started` moves the row to RUNNING;
4. settle: succeeded / deterministic failure / cancel → the row's terminal state, then ACK; a retryable failure
   (executor lost, out of memory, stream broken) → RETRY, which re-queues the job (the next attempt avoids this
   executor) or dead-letters it when attempts are exhausted (then the row is FAILED with MAX_ATTEMPTS_EXCEEDED).

If this process dies, its leases lapse and the queue's janitor re-queues the jobs (attempt + 1); the outcome
consumer (outcomes.py) records that. An attempt that outlives its dispatcher keeps running on its executor, but
the row only ever takes the first terminal state, so at most one set of outputs is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.rpc import status_pb2
from prometheus_client import Histogram

from comfymesh.common.v1 import execution_event_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2 as xpb
from comfymesh.executor.v1 import executor_service_pb2_grpc as xgrpc
from comfymesh.queue.v1 import queue_service_pb2 as qpb
from comfymesh.queue.v1 import queue_service_pb2_grpc as qgrpc
from service_runtime.errors import Reason, ServiceError
from service_runtime.errors.status import from_rpc_error, to_status_proto
from service_runtime.transport.graph_codec import graph_to_proto
from services.execution.placement import JobNeeds, rank
from services.execution.registry import ExecutorEntry, ExecutorRegistry
from services.execution_store.cancellation import CancelFlags
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.lifecycle import ExecutionLifecycle
from services.execution_store.repository import ExecutionRepository

log = logging.getLogger(__name__)
DISPATCH_LATENCY = Histogram("dispatch_latency_seconds", "From a job's lease to the executor's started event.",
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LEASE_WAIT_SECONDS = 5.0
FLEET_RECHECK_SECONDS = 1.0
# An interrupt nobody asked for that arrives this close to the attempt's deadline is the deadline's (the executor
# interrupts at the deadline; the two clocks are the same host's or NTP-synchronised).
DEADLINE_SLACK_SECONDS = 0.25
BUSY_RETRIES = 50
BUSY_RETRY_SECONDS = 0.02


class Outcome(enum.Enum):
    DONE = "done"  # the attempt ran (and was settled)
    BUSY = "busy"  # the executor is still busy with another job
    REFUSED = "refused"  # draining, or unreachable before it took the job


class LeaseLostError(Exception):
    """The queue took the lease back (it lapsed): another attempt owns the job now."""


class SettledError(Exception):
    """The attempt was settled early (e.g. failed for want of a capable executor): stop driving it."""


@dataclass
class Attempt:
    """One job being driven: the lease, the record, and what the attempt learned."""

    lease: qpb.Lease
    record: ExecutionRecord
    needs: JobNeeds
    avoid: list[str] = field(default_factory=list)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    executor: ExecutorEntry | None = None
    leased_at: float = field(default_factory=time.monotonic)
    deadline: float = 0.0  # epoch seconds the executor was told to interrupt the attempt at
    placed: bool = False  # counted out of the dispatcher's `_placing`

    @property
    def execution_id(self) -> str:
        return self.lease.job.job_id

    @property
    def number(self) -> int:
        return self.lease.job.attempt


def _status(reason: Reason, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
            **metadata: str) -> status_pb2.Status:
    return to_status_proto(ServiceError(code, reason, message, metadata))


class RunningIndex:
    """Where each running execution runs ("address|executor id|attempt"), for InterruptExecution from any
    replica; entries expire unless the dispatcher renews them with its lease."""

    def __init__(self, client: Any, namespace: str = "cm:running") -> None:
        self._redis = client
        self._ns = namespace

    async def set(self, execution_id: str, address: str, executor_id: str, attempt: int, ttl_seconds: float) -> None:
        await self._redis.set(f"{self._ns}:{execution_id}", f"{address}|{executor_id}|{attempt}",
                              px=max(1000, int(ttl_seconds * 1000)))

    async def get(self, execution_id: str) -> tuple[str, str, int] | None:
        value = await self._redis.get(f"{self._ns}:{execution_id}")
        if value is None:
            return None
        address, executor_id, attempt = value.decode().split("|")
        return address, executor_id, int(attempt)

    async def clear(self, execution_id: str) -> None:
        await self._redis.delete(f"{self._ns}:{execution_id}")


def input_files(record: ExecutionRecord) -> list[pb.InputFile]:
    files = []
    for item in record.inputs:
        message = pb.InputFile(name=item.get("name", ""), content_type=item.get("content_type", ""),
                               sha256=item.get("sha256", ""))
        if item.get("object_key"):
            message.object_key = item["object_key"]
        elif item.get("url"):
            message.url = item["url"]
        files.append(message)
    return files


class ExecutorChannels:
    """One channel per executor address, reused across jobs."""

    def __init__(self, factory: Callable[[str], grpc.aio.Channel]) -> None:
        self._factory = factory
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> xgrpc.GpuExecutorServiceAsyncStub:
        if address not in self._channels:
            self._channels[address] = self._factory(address)
        return xgrpc.GpuExecutorServiceStub(self._channels[address])

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class Dispatcher:
    def __init__(self, *, consumer: str, queue: qgrpc.QueueServiceAsyncStub, registry: ExecutorRegistry,
                 repository: ExecutionRepository, lifecycle: ExecutionLifecycle, cancels: CancelFlags,
                 executors: ExecutorChannels, running: RunningIndex, slots: int, lease_seconds: float,
                 default_run_timeout_seconds: float) -> None:
        self.consumer = consumer
        self._queue = queue
        self._registry = registry
        self._repository = repository
        self._lifecycle = lifecycle
        self._cancels = cancels
        self._executors = executors
        self._slots = asyncio.Semaphore(slots)
        self._lease_seconds = lease_seconds
        self._default_run_timeout = default_run_timeout_seconds
        self._running = running
        self._fleet_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._placing = 0  # leased jobs of this replica not yet holding an executor

    def fleet_changed(self) -> None:
        """Wakes placement (an executor registered or freed up in this process)."""
        self._fleet_changed.set()

    async def _wait_fleet_change(self) -> None:
        self._fleet_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._fleet_changed.wait(), FLEET_RECHECK_SECONDS)

    async def _free_executors(self) -> list[ExecutorEntry]:
        live = [e for e in await self._registry.live() if e.accepting]
        reserved = await self._registry.reserved([e.executor_id for e in live])
        return [e for e in live if e.executor_id not in reserved]

    # --- the lease loop ---

    async def run(self) -> None:
        """Leases jobs while some executor is free; each job is driven by its own task."""
        try:
            while True:
                await self._slots.acquire()
                try:
                    # Lease only for an executor no leased job of ours is about to take: jobs leased ahead of
                    # capacity would race each other for the next free executor and break priority order.
                    while len(await self._free_executors()) <= self._placing:
                        await self._wait_fleet_change()
                    response = await self._queue.LeaseJob(qpb.LeaseJobRequest(
                        consumer=self.consumer, wait=duration_pb2.Duration(seconds=int(LEASE_WAIT_SECONDS)),
                        lease_duration=duration_pb2.Duration(seconds=max(1, int(self._lease_seconds)))))
                except BaseException:
                    self._slots.release()
                    raise
                if not response.HasField("lease"):
                    self._slots.release()
                    continue
                self._placing += 1
                task = asyncio.create_task(self._drive(response.lease), name=f"drive-{response.lease.job.job_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _placed(self, attempt: Attempt | None) -> None:
        """The job holds an executor (or never will): the lease loop may take another job for the rest."""
        if attempt is None or not attempt.placed:
            self._placing -= 1
            if attempt is not None:
                attempt.placed = True
            self.fleet_changed()

    async def _drive(self, lease: qpb.Lease) -> None:
        renewer: asyncio.Task[None] | None = None
        attempt: Attempt | None = None
        try:
            record = await self._repository.get_internal(lease.job.job_id)
            if record is None or record.state.terminal:
                await self._complete(lease, qpb.COMPLETION_OUTCOME_ACK)
                return
            attempt = Attempt(lease, record, JobNeeds(frozenset(lease.job.required_node_classes),
                                                      tuple(lease.job.model_names),
                                                      lease.job.vram_estimate_bytes),
                              avoid=await self._registry.avoided(lease.job.job_id) if lease.job.attempt > 1 else [])
            renewer = asyncio.create_task(self._renew(attempt))
            await self._attempt(attempt)
        except SettledError:
            pass
        except LeaseLostError:
            log.warning("lease lost; another attempt owns the job", extra={"execution_id": lease.job.job_id})
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug or a backing system down: retry the job rather than strand it (the lease would lapse anyway).
            log.exception("dispatching failed", extra={"execution_id": lease.job.job_id})
            with contextlib.suppress(Exception):
                await self._settle_retry(attempt, _status(Reason.INTERNAL_ERROR, "the dispatcher failed")) \
                    if attempt else await self._complete(lease, qpb.COMPLETION_OUTCOME_RETRY)
        finally:
            if attempt is None or not attempt.placed:
                self._placed(attempt)
            if renewer is not None:
                renewer.cancel()
            if attempt is not None and attempt.executor is not None:
                with contextlib.suppress(Exception):
                    await self._registry.release(attempt.executor.executor_id, attempt.execution_id)
            self._slots.release()
            self.fleet_changed()

    async def _renew(self, attempt: Attempt) -> None:
        interval = max(0.2, self._lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._queue.RenewLease(qpb.RenewLeaseRequest(lease_id=attempt.lease.lease_id,
                                                                   consumer=self.consumer))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    attempt.lost.set()
                    return
                log.warning("lease renewal failed: %s", exc.details())
                continue
            if attempt.executor is not None:
                await self._registry.extend_reservation(attempt.executor.executor_id, attempt.execution_id,
                                                        self._lease_seconds)
                await self._mark_running(attempt)

    async def _complete(self, lease: qpb.Lease, outcome: int, error: status_pb2.Status | None = None) -> qpb.Job:
        try:
            return await self._queue.CompleteJob(qpb.CompleteJobRequest(
                lease_id=lease.lease_id, consumer=self.consumer, outcome=outcome, error=error))  # type: ignore[arg-type]
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise LeaseLostError from exc
            raise

    # --- one attempt ---

    async def _attempt(self, attempt: Attempt) -> None:
        while True:
            reason = await self._cancels.reason(attempt.execution_id)
            if reason is not None:
                await self._lifecycle.cancel(attempt.record, attempt.number, reason)
                await self._complete(attempt.lease, qpb.COMPLETION_OUTCOME_ACK)
                return
            if attempt.lost.is_set():
                raise LeaseLostError
            executor = await self._place(attempt)
            if executor is None:
                continue
            attempt.executor = executor
            self._placed(attempt)
            outcome = await self._execute(attempt, executor)
            for _ in range(BUSY_RETRIES):
                if outcome is not Outcome.BUSY:
                    break
                # Still finishing its previous job (its terminal event is out, its cleanup not yet): keep the
                # reservation, so this job, not a later lease of lower priority, gets the executor next.
                await asyncio.sleep(BUSY_RETRY_SECONDS)
                outcome = await self._execute(attempt, executor)
            if outcome is Outcome.DONE:
                return
            # Busy for long, draining or unreachable after all: free the reservation and place again.
            await self._registry.release(executor.executor_id, attempt.execution_id)
            attempt.executor = None
            attempt.avoid.append(executor.executor_id)

    async def _place(self, attempt: Attempt) -> ExecutorEntry | None:
        """Reserves the best capable free executor, waiting for one; None to re-check cancel and the lease."""
        live = await self._registry.live()
        if live and not rank(live, attempt.needs):
            # Executors exist but none can ever run this graph (its classes or memory): fail it, do not hog.
            missing = sorted(attempt.needs.node_classes - set().union(*(e.node_classes for e in live)))
            problem = (f"no executor offers the node classes {missing}" if missing else
                       "no single executor offers every node class of this graph (each engine in the fleet offers "
                       "only part of them)")
            await self._lifecycle.fail(attempt.record, attempt.number, _status(
                Reason.NO_CAPABLE_EXECUTOR, f"{problem}, or enough memory",
                grpc.StatusCode.FAILED_PRECONDITION, missing_node_classes=",".join(missing)))
            await self._complete(attempt.lease, qpb.COMPLETION_OUTCOME_ACK)
            raise SettledError
        reserved = await self._registry.reserved([e.executor_id for e in live])
        for entry in rank((e for e in live if e.executor_id not in reserved), attempt.needs, avoid=attempt.avoid):
            if await self._registry.reserve(entry.executor_id, attempt.execution_id, self._lease_seconds):
                return entry
        if len(attempt.avoid) >= len(live):
            attempt.avoid.clear()  # every executor was tried once: any is fine again
        await self._wait_fleet_change()
        return None

    async def _mark_running(self, attempt: Attempt) -> None:
        if attempt.executor is not None:
            await self._running.set(attempt.execution_id, attempt.executor.address, attempt.executor.executor_id,
                                    attempt.number, self._lease_seconds * 2)

    def _request(self, attempt: Attempt) -> xpb.ExecuteRequest:
        record = attempt.record
        request = xpb.ExecuteRequest(
            execution_id=record.id, attempt=attempt.number, graph=graph_to_proto(record.graph),
            inputs=input_files(record), output_prefix=f"executions/{record.id}/attempt-{attempt.number}",
            tenant=record.tenant)
        timeout = record.run_timeout_seconds or self._default_run_timeout
        attempt.deadline = time.time() + timeout
        request.deadline.FromNanoseconds(int(attempt.deadline * 1e9))
        return request

    async def _execute(self, attempt: Attempt, executor: ExecutorEntry) -> Outcome:
        """Runs the attempt on the executor and settles it, unless the executor refused it (busy, draining) or
        could not be reached before it took the job."""
        request = self._request(attempt)
        await self._mark_running(attempt)
        stub = self._executors.stub(executor.address)
        started = time.monotonic()
        terminal: pb.ExecutionEvent | None = None
        received = 0
        try:
            async for event in stub.Execute(request):
                received += 1
                if attempt.lost.is_set():
                    await self._interrupt_quietly(stub, attempt.execution_id)
                    raise LeaseLostError
                kind = event.WhichOneof("kind")
                event.execution_id = attempt.execution_id
                event.attempt = attempt.number
                if kind == "started":
                    DISPATCH_LATENCY.observe(time.monotonic() - attempt.leased_at)
                    started = time.monotonic()
                    moved = await self._lifecycle.started(attempt.record, attempt.number, executor.executor_id,
                                                          event)
                    # The row ended meanwhile, or a cancel raced the start (its interrupt found nothing running
                    # yet): stop the executor now.
                    if not moved or await self._cancels.reason(attempt.execution_id) is not None:
                        await self._interrupt_quietly(stub, attempt.execution_id)
                elif kind in ("succeeded", "failed", "cancelled"):
                    terminal = event
                    break
                elif kind != "heartbeat":
                    await self._lifecycle.relay(event, ExecutionState.RUNNING)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if terminal is None and str(error.reason) == str(Reason.EXECUTOR_BUSY):
                return Outcome.BUSY
            if terminal is None and str(error.reason) == str(Reason.EXECUTOR_DRAINING):
                return Outcome.REFUSED
            if received == 0 and exc.code() == grpc.StatusCode.UNAVAILABLE:
                # Unreachable before it took the job: not an attempt. Forget the executor (a live one answers its
                # next heartbeat with known=false and registers again) and place the job elsewhere.
                log.warning("executor %s unreachable: %s", executor.executor_id, error.message)
                await self._registry.deregister(executor.executor_id)
                self.fleet_changed()
                return Outcome.REFUSED
            await self._settle_retry(attempt, _status(
                Reason.EXECUTOR_LOST, f"executor {executor.executor_id} stopped answering: {error.message}",
                executor_id=executor.executor_id))
            return Outcome.DONE
        finally:
            with contextlib.suppress(Exception):
                await self._running.clear(attempt.execution_id)
        run_seconds = time.monotonic() - started
        # The executor is free from its terminal event on: let the next job go there while this one is settled.
        await self._registry.release(executor.executor_id, attempt.execution_id)
        self.fleet_changed()
        if terminal is None:
            await self._settle_retry(attempt, _status(
                Reason.EXECUTOR_LOST, f"executor {executor.executor_id} ended the stream without a result",
                executor_id=executor.executor_id))
            return Outcome.DONE
        await self._settle(attempt, terminal, run_seconds, executor)
        return Outcome.DONE

    async def _settle(self, attempt: Attempt, event: pb.ExecutionEvent, run_seconds: float,
                      executor: ExecutorEntry) -> None:
        kind = event.WhichOneof("kind")
        record = attempt.record
        if kind == "cancelled":
            reason = await self._cancels.reason(attempt.execution_id)
            timeout = record.run_timeout_seconds or self._default_run_timeout
            if reason is not None:
                event.cancelled.reason = reason
            elif time.time() >= attempt.deadline - DEADLINE_SLACK_SECONDS:
                await self._lifecycle.fail(record, attempt.number, _status(
                    Reason.EXECUTION_TIMEOUT, f"the attempt ran longer than its run timeout ({timeout:g}s)",
                    grpc.StatusCode.DEADLINE_EXCEEDED))
                await self._complete(attempt.lease, qpb.COMPLETION_OUTCOME_ACK)
                return
            else:
                # Nobody asked for it: the executor interrupted the job itself (draining past its grace period).
                await self._settle_retry(attempt, _status(
                    Reason.EXECUTOR_LOST, f"executor {executor.executor_id} interrupted the attempt",
                    executor_id=executor.executor_id))
                return
        if kind == "failed" and event.failed.retryable:
            await self._settle_retry(attempt, event.failed.error)
            return
        await self._lifecycle.finish(record, event, run_seconds=run_seconds, device_type=executor.device_name)
        await self._complete(attempt.lease, qpb.COMPLETION_OUTCOME_ACK)

    async def _settle_retry(self, attempt: Attempt | None, error: status_pb2.Status) -> None:
        if attempt is None:
            return
        if attempt.executor is not None:  # the next attempt goes elsewhere when it can
            await self._registry.avoid(attempt.execution_id, attempt.executor.executor_id)
        job = await self._complete(attempt.lease, qpb.COMPLETION_OUTCOME_RETRY, error)
        if job.state == qpb.JOB_STATE_QUEUED:
            await self._lifecycle.retrying(attempt.execution_id, attempt.number, error)
        elif job.state == qpb.JOB_STATE_DEAD_LETTERED:
            await self._lifecycle.fail(attempt.record, attempt.number, _status(
                Reason.MAX_ATTEMPTS_EXCEEDED,
                f"gave up after {attempt.number} attempts; the last failed with: {error.message}",
                grpc.StatusCode.ABORTED, last_error=error.message))

    async def _interrupt_quietly(self, stub: xgrpc.GpuExecutorServiceAsyncStub, execution_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Interrupt(xpb.InterruptRequest(execution_id=execution_id), timeout=5)

    async def close(self) -> None:
        await self._executors.close()
