"""QueueService through gRPC on a real Redis: the component as the runner builds it, typed errors, page tokens."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from comfymesh.queue.v1 import queue_service_pb2 as pb
from comfymesh.queue.v1 import queue_service_pb2_grpc
from service_runtime.grpc import GrpcServer
from service_runtime.ids import time_ordered_id
from service_runtime.settings import Settings
from services.context import AppContext
from services.queue.component import build_queue_binding
from services.queue.job_queue import JobError
from services.queue.transport import error_to_status

pytestmark = pytest.mark.integration

if TYPE_CHECKING:
    Stub = queue_service_pb2_grpc.QueueServiceAsyncStub


@pytest.fixture
async def stub(redis_url: str, tmp_path: Path) -> AsyncIterator[Stub]:
    settings = Settings(home=tmp_path, redis_url=redis_url, metrics_port=0, shutdown_grace_seconds=0.5,
                        queue_max_size=6, queue_max_attempts=2, queue_lease_seconds=30,
                        queue_janitor_interval_seconds=0.1, queue_wait_samples=50)
    ctx = AppContext(settings)
    namespace = f"test:qs:{secrets.token_hex(4)}"
    server = GrpcServer(settings, "queue", [build_queue_binding(ctx, namespace)], port=0, host="127.0.0.1")
    server.on_start.append(ctx.start_background)  # as services.runner does: the janitor runs while serving
    server.on_stop.append(ctx.close)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield queue_service_pb2_grpc.QueueServiceStub(channel)
    finally:
        keys = [key async for key in ctx.redis.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await ctx.redis.delete(*keys)
        await server.stop(0.2)


def _job(priority: int = 0, **fields: object) -> pb.Job:
    return pb.Job(job_id=time_ordered_id(), priority=priority, **fields)  # type: ignore[arg-type]


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


async def _error(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    """The status code, the ErrorInfo reason and the field violations of a failed call."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info, fields = error_details_pb2.ErrorInfo(), []
    assert status.details[0].Unpack(info)
    for detail in status.details[1:]:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return caught.value.code(), info.reason, fields


async def test_enqueue_lease_renew_complete(stub: Stub) -> None:
    deadline = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
    sent = _job(7, tenant="acme", required_node_classes=["KSampler"], model_names=["sd15.safetensors"],
                vram_estimate_bytes=123, deadline=deadline, state=pb.JOB_STATE_DONE, attempt=9)  # output-only: ignored
    job = await stub.EnqueueJob(pb.EnqueueJobRequest(job=sent))
    assert (job.state, job.attempt, job.position, job.priority) == (pb.JOB_STATE_QUEUED, 0, 0, 7)
    assert (job.tenant, list(job.required_node_classes), list(job.model_names), job.vram_estimate_bytes) == \
        ("acme", ["KSampler"], ["sd15.safetensors"], 123)
    assert job.deadline == deadline and job.enqueue_time.seconds > 0
    assert await stub.EnqueueJob(pb.EnqueueJobRequest(job=sent)) == job  # idempotent

    response = await stub.LeaseJob(pb.LeaseJobRequest(consumer="dispatcher-1", lease_duration=_seconds(20)))
    lease = response.lease
    assert response.HasField("lease") and lease.job.job_id == job.job_id and lease.consumer == "dispatcher-1"
    assert (lease.job.state, lease.job.attempt) == (pb.JOB_STATE_LEASED, 1)
    assert lease.expire_time.seconds - time.time() == pytest.approx(20, abs=3)
    renewed = await stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id, consumer="dispatcher-1"))
    assert renewed.lease_id == lease.lease_id and renewed.expire_time.ToNanoseconds() >= \
        lease.expire_time.ToNanoseconds()
    stats = await stub.GetQueueStats(pb.GetQueueStatsRequest())
    assert (stats.running, stats.queued_total, stats.recent_wait.samples, stats.max_queue_size) == (1, 0, 1, 6)

    done = await stub.CompleteJob(pb.CompleteJobRequest(lease_id=lease.lease_id, consumer="dispatcher-1",
                                                        outcome=pb.COMPLETION_OUTCOME_ACK))
    assert done.state == pb.JOB_STATE_DONE
    assert (await stub.GetJob(pb.GetJobRequest(job_id=job.job_id))).state == pb.JOB_STATE_DONE
    assert not (await stub.LeaseJob(pb.LeaseJobRequest(consumer="dispatcher-1"))).HasField("lease")


async def test_a_waiting_lease_wakes_on_enqueue(stub: Stub) -> None:
    waiter = asyncio.ensure_future(stub.LeaseJob(pb.LeaseJobRequest(consumer="d", wait=_seconds(5))))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    started = time.monotonic()
    job = await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job()))
    response = await asyncio.wait_for(waiter, 4.5)
    assert response.lease.job.job_id == job.job_id
    assert time.monotonic() - started < 4.5


async def test_retry_then_dead_letter_with_the_last_error(stub: Stub) -> None:
    job = await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job()))
    error = error_to_status(JobError(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "OUT_OF_MEMORY", "CUDA OOM"))
    for attempt, state in ((1, pb.JOB_STATE_QUEUED), (2, pb.JOB_STATE_DEAD_LETTERED)):
        lease = (await stub.LeaseJob(pb.LeaseJobRequest(consumer="d"))).lease
        assert lease.job.attempt == attempt
        after = await stub.CompleteJob(pb.CompleteJobRequest(lease_id=lease.lease_id, consumer="d",
                                                             outcome=pb.COMPLETION_OUTCOME_RETRY, error=error))
        assert after.state == state
    letters = await stub.ListDeadLetters(pb.ListDeadLettersRequest())
    [letter] = letters.dead_letters
    assert letter.job.job_id == job.job_id and letter.job.state == pb.JOB_STATE_DEAD_LETTERED
    assert letter.last_error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert letter.last_error.message == "CUDA OOM" and letter.dead_letter_time.seconds > 0
    info = error_details_pb2.ErrorInfo()
    assert letter.last_error.details[0].Unpack(info) and info.reason == "OUT_OF_MEMORY"
    assert (await stub.GetQueueStats(pb.GetQueueStatsRequest())).dead_letters == 1


async def test_the_janitor_runs_with_the_service(stub: Stub) -> None:
    job = await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job()))
    lease = (await stub.LeaseJob(pb.LeaseJobRequest(consumer="d", lease_duration=_seconds(0.2)))).lease
    assert lease.job.job_id == job.job_id
    # Nobody renews: the janitor (every 0.1 s) re-queues it, which wakes this waiting lessee.
    again = (await stub.LeaseJob(pb.LeaseJobRequest(consumer="e", wait=_seconds(5)))).lease
    assert again.job.job_id == job.job_id and again.job.attempt == 2
    code, reason, _ = await _error(stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id, consumer="d")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")


async def test_pause_and_resume(stub: Stub) -> None:
    assert (await stub.PauseQueue(pb.PauseQueueRequest())).paused
    job = await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job(-3)))
    assert not (await stub.LeaseJob(pb.LeaseJobRequest(consumer="d"))).HasField("lease")
    stats = await stub.ResumeQueue(pb.ResumeQueueRequest())
    assert not stats.paused and [(d.priority, d.depth) for d in stats.depths] == [(-3, 1)]
    assert stats.oldest_age.ToNanoseconds() >= 0 and stats.queued_total == 1
    assert (await stub.LeaseJob(pb.LeaseJobRequest(consumer="d"))).lease.job.job_id == job.job_id


async def test_remove_and_reprioritise(stub: Stub) -> None:
    first, second = [await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job())) for _ in range(2)]
    moved = await stub.UpdateJobPriority(pb.UpdateJobPriorityRequest(job_id=second.job_id, priority=9))
    assert (moved.priority, moved.position) == (9, 0)
    await stub.RemoveJob(pb.RemoveJobRequest(job_id=second.job_id))
    assert (await stub.GetJob(pb.GetJobRequest(job_id=second.job_id))).state == pb.JOB_STATE_REMOVED
    listed = await stub.ListQueuedJobs(pb.ListQueuedJobsRequest())
    assert [j.job_id for j in listed.jobs] == [first.job_id] and not listed.next_page_token
    lease = (await stub.LeaseJob(pb.LeaseJobRequest(consumer="d"))).lease
    for call in (stub.RemoveJob(pb.RemoveJobRequest(job_id=first.job_id)),
                 stub.UpdateJobPriority(pb.UpdateJobPriorityRequest(job_id=first.job_id, priority=1))):
        assert (await _error(call))[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_QUEUED")
    assert lease.job.job_id == first.job_id


async def test_typed_errors(stub: Stub) -> None:
    unknown = time_ordered_id()
    cases = [
        (stub.EnqueueJob(pb.EnqueueJobRequest(job=_job(101))),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["job.priority"])),
        (stub.EnqueueJob(pb.EnqueueJobRequest(job=pb.Job(job_id="x"))),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["job.job_id"])),
        (stub.EnqueueJob(pb.EnqueueJobRequest()), (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["job"])),
        (stub.EnqueueJob(pb.EnqueueJobRequest(job=_job(model_names=[""]))),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["job.model_names[0]"])),
        (stub.GetJob(pb.GetJobRequest(job_id=unknown)), (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", [])),
        (stub.RemoveJob(pb.RemoveJobRequest(job_id=unknown)), (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", [])),
        (stub.GetJob(pb.GetJobRequest(job_id="nope")),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["job_id"])),
        (stub.UpdateJobPriority(pb.UpdateJobPriorityRequest(job_id=unknown, priority=-200)),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["priority"])),
        (stub.LeaseJob(pb.LeaseJobRequest()), (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["consumer"])),
        (stub.LeaseJob(pb.LeaseJobRequest(consumer="d", wait=duration_pb2.Duration(seconds=-1))),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["wait"])),
        (stub.RenewLease(pb.RenewLeaseRequest(lease_id=f"{unknown}.1.ab", consumer="d")),
         (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST", [])),
        (stub.CompleteJob(pb.CompleteJobRequest(lease_id=f"{unknown}.1.ab", consumer="d",
                                                outcome=pb.COMPLETION_OUTCOME_ACK)),
         (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST", [])),
        (stub.CompleteJob(pb.CompleteJobRequest(lease_id=f"{unknown}.1.ab", consumer="d")),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["outcome"])),
        (stub.ListQueuedJobs(pb.ListQueuedJobsRequest(page_size=-1)),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["page_size"])),
    ]
    for call, expected in cases:
        assert await _error(call) == expected


async def test_a_full_queue_is_resource_exhausted(stub: Stub) -> None:
    for _ in range(6):
        await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job()))
    code, reason, _ = await _error(stub.EnqueueJob(pb.EnqueueJobRequest(job=_job())))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")


async def test_queued_jobs_page_with_opaque_tokens(stub: Stub) -> None:
    ids = [(await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job(i % 2)))).job_id for i in range(5)]
    expected = [ids[1], ids[3], ids[0], ids[2], ids[4]]
    seen, positions, token, pages = [], [], "", 0
    while True:
        page = await stub.ListQueuedJobs(pb.ListQueuedJobsRequest(page_size=2, page_token=token))
        seen += [j.job_id for j in page.jobs]
        positions += [j.position for j in page.jobs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
        assert not any(c in token for c in "{}:\"")  # opaque, not the raw cursor
    assert (seen, positions, pages) == (expected, [0, 1, 2, 3, 4], 3)

    first = await stub.ListQueuedJobs(pb.ListQueuedJobsRequest(page_size=2))
    tampered = first.next_page_token[:-2] + ("AA" if not first.next_page_token.endswith("AA") else "BB")
    code, reason, fields = await _error(stub.ListQueuedJobs(pb.ListQueuedJobsRequest(page_token=tampered)))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", ["page_token"])
    # A token of one list is not a token of the other.
    code, reason, _ = await _error(stub.ListDeadLetters(pb.ListDeadLettersRequest(
        page_token=first.next_page_token)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_dead_letters_page_newest_first(stub: Stub) -> None:
    ids = []
    for _ in range(3):
        ids.append((await stub.EnqueueJob(pb.EnqueueJobRequest(job=_job()))).job_id)
        for _attempt in range(2):
            lease = (await stub.LeaseJob(pb.LeaseJobRequest(consumer="d"))).lease
            await stub.CompleteJob(pb.CompleteJobRequest(lease_id=lease.lease_id, consumer="d",
                                                         outcome=pb.COMPLETION_OUTCOME_RETRY,
                                                         error=status_pb2.Status(code=14, message="lost")))
    seen, token = [], ""
    while True:
        page = await stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=2, page_token=token))
        seen += [d.job.job_id for d in page.dead_letters]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
