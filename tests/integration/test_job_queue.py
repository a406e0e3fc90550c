"""The job queue's domain API on a real Redis: priority order, leases, retries, dead letters, deadlines, outcomes."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from service_runtime.errors import Reason, ServiceError
from service_runtime.ids import time_ordered_id
from service_runtime.redis_client import create_redis
from services.queue.janitor import Janitor
from services.queue.job_queue import (
    CompletionOutcome,
    JobError,
    JobQueue,
    JobSpec,
    JobState,
    outcomes_stream,
)

pytestmark = pytest.mark.integration

QueueFactory = Callable[..., JobQueue]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = create_redis(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
async def make_queue(client: redis.Redis) -> AsyncIterator[QueueFactory]:
    """Queues in namespaces of their own (the Redis database is shared by the whole session)."""
    namespaces: list[str] = []

    def make(**options: object) -> JobQueue:
        namespace = f"test:q:{secrets.token_hex(4)}"
        namespaces.append(namespace)
        settings: dict[str, object] = {"max_queue_size": 1000, "lease_seconds": 30.0, "max_attempts": 3,
                                       "wait_samples": 100, **options}
        return JobQueue(client, namespace=namespace, **settings)  # type: ignore[arg-type]

    yield make
    for namespace in namespaces:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)


@pytest.fixture
def queue(make_queue: QueueFactory) -> JobQueue:
    return make_queue()


async def _outcomes(client: redis.Redis, queue: JobQueue) -> list[dict[str, str]]:
    entries = await client.xrange(outcomes_stream(queue.namespace)) or []
    return [{_str(k): _str(v) for k, v in (fields or {}).items()} for _, fields in entries]


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _drain(queue: JobQueue, consumer: str = "drain") -> list[str]:
    leased = []
    while (lease := await queue.lease(consumer)) is not None:
        leased.append(lease.job.job_id)
    return leased


def _reason(error: pytest.ExceptionInfo[ServiceError]) -> tuple[grpc.StatusCode, str]:
    return error.value.code, str(error.value.reason)


# -- order -----------------------------------------------------------------------------------------------------


async def test_strict_priority_and_fifo_inside_a_priority_with_a_backlog(queue: JobQueue) -> None:
    rng = random.Random(7)
    submitted = []
    for index in range(60):  # a burst: many land in the same millisecond and must keep their order
        priority = rng.choice([-100, -5, 0, 0, 7, 100])
        job = await queue.enqueue(JobSpec(time_ordered_id(), priority=priority))
        assert job.state == JobState.QUEUED and job.attempt == 0
        submitted.append((priority, index, job.job_id))
    expected = [job_id for _, _, job_id in sorted(submitted, key=lambda s: (-s[0], s[1]))]

    listed, _ = await queue.list_queued(1000)
    assert [j.job_id for j in listed] == expected
    assert [j.position for j in listed] == list(range(60))
    assert (await queue.get(expected[10])).position == 10
    assert await _drain(queue) == expected


async def test_fifo_holds_for_a_burst_inside_one_millisecond(queue: JobQueue) -> None:
    # Concurrent enqueues on several connections: many arrive in the same millisecond. Ids sort against arrival
    # order, so a tie broken by id instead of by arrival would show.
    ids = [f"{10**9 - index:032x}" for index in range(120)]
    jobs = []
    for start in range(0, len(ids), 30):  # 30 at a time: the client's pool has 64 connections
        jobs += await asyncio.gather(*(queue.enqueue(JobSpec(job_id)) for job_id in ids[start:start + 30]))
    # Each job's position at enqueue is the number of jobs that arrived before it: FIFO means 0..n-1, once each,
    # and the run order is the arrival order.
    assert sorted(j.position for j in jobs) == list(range(120))
    arrival = [j.job_id for j in sorted(jobs, key=lambda j: j.position)]
    assert [j.job_id for j in (await queue.list_queued(1000))[0]] == arrival
    assert await _drain(queue) == arrival


async def test_position_counts_the_jobs_ahead(queue: JobQueue) -> None:
    low = await queue.enqueue(JobSpec(time_ordered_id(), priority=0))
    assert low.position == 0
    second = await queue.enqueue(JobSpec(time_ordered_id(), priority=0))
    assert second.position == 1
    urgent = await queue.enqueue(JobSpec(time_ordered_id(), priority=50))
    assert urgent.position == 0
    assert (await queue.get(second.job_id)).position == 2


async def test_list_queued_pages_cover_the_queue_in_order(queue: JobQueue) -> None:
    ids = [(await queue.enqueue(JobSpec(time_ordered_id(), priority=i % 3))).job_id for i in range(11)]
    expected = [j.job_id for j in (await queue.list_queued(100))[0]]
    assert sorted(expected) == sorted(ids)
    seen, cursor, positions = [], None, []
    while True:
        page, cursor = await queue.list_queued(4, cursor)
        seen += [j.job_id for j in page]
        positions += [j.position for j in page]
        if cursor is None:
            break
    assert seen == expected and positions == list(range(11))


# -- enqueue ---------------------------------------------------------------------------------------------------


async def test_enqueue_is_idempotent_per_job_id(queue: JobQueue) -> None:
    spec = JobSpec(time_ordered_id(), priority=3, tenant="t1", required_node_classes=("KSampler",),
                   model_names=("sd15.safetensors",), vram_estimate_bytes=1 << 30, deadline=time.time() + 3600)
    first = await queue.enqueue(spec)
    again = await queue.enqueue(JobSpec(spec.job_id, priority=-50))  # a retried submit, different fields
    assert again == first
    assert (await queue.stats()).queued_total == 1
    assert (first.tenant, first.required_node_classes, first.model_names, first.vram_estimate_bytes) == \
        ("t1", ("KSampler",), ("sd15.safetensors",), 1 << 30)
    assert first.deadline == pytest.approx(spec.deadline, abs=0.001)

    lease = await queue.lease("c1")
    assert lease is not None
    leased_again = await queue.enqueue(spec)
    assert leased_again.state == JobState.LEASED and leased_again.attempt == 1
    assert await queue.lease("c2") is None  # no duplicate was queued

    await queue.complete(lease.lease_id, "c1", CompletionOutcome.ACK)
    with pytest.raises(ServiceError) as finished:
        await queue.enqueue(spec)
    assert _reason(finished) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.JOB_NOT_QUEUED)


async def test_full_queue_refuses_new_jobs(make_queue: QueueFactory) -> None:
    queue = make_queue(max_queue_size=3)
    ids = [(await queue.enqueue(JobSpec(time_ordered_id()))).job_id for _ in range(3)]
    with pytest.raises(ServiceError) as full:
        await queue.enqueue(JobSpec(time_ordered_id()))
    assert _reason(full) == (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.QUEUE_FULL)
    assert (await queue.enqueue(JobSpec(ids[0]))).job_id == ids[0]  # idempotent re-submit still answers
    assert await queue.lease("c") is not None  # a leased job no longer counts as queued
    await queue.enqueue(JobSpec(time_ordered_id()))


async def test_unbounded_queue(make_queue: QueueFactory) -> None:
    queue = make_queue(max_queue_size=0)
    for _ in range(5):
        await queue.enqueue(JobSpec(time_ordered_id()))
    assert (await queue.stats()).queued_total == 5


@pytest.mark.parametrize(("spec", "field"), [
    (JobSpec("0" * 32, priority=101), "job.priority"),
    (JobSpec("0" * 32, priority=-101), "job.priority"),
    (JobSpec("not-an-id"), "job.job_id"),
    (JobSpec("0" * 32, vram_estimate_bytes=-1), "job.vram_estimate_bytes"),
])
async def test_bad_jobs_are_invalid_arguments(queue: JobQueue, spec: JobSpec, field: str) -> None:
    with pytest.raises(ServiceError) as bad:
        await queue.enqueue(spec)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.value.field_violations] == [field]


# -- leasing ---------------------------------------------------------------------------------------------------


async def test_lease_records_delivery_consumer_and_expiry(queue: JobQueue) -> None:
    job = await queue.enqueue(JobSpec(time_ordered_id()))
    lease = await queue.lease("dispatcher-a", lease_seconds=12)
    assert lease is not None
    assert lease.job.job_id == job.job_id and lease.job.state == JobState.LEASED and lease.job.attempt == 1
    assert lease.consumer == "dispatcher-a" and lease.lease_id.startswith(f"{job.job_id}.1.")
    assert lease.expire_time - time.time() == pytest.approx(12, abs=2)
    assert (await queue.get(job.job_id)).state == JobState.LEASED
    assert await queue.lease("dispatcher-a") is None  # wait=0 answers at once


async def test_a_waiting_lessee_wakes_on_enqueue(queue: JobQueue) -> None:
    waiter = asyncio.create_task(queue.lease("c", wait=5))
    await asyncio.sleep(0.3)
    assert not waiter.done()  # it blocks: nothing is queued
    started = time.monotonic()
    job = await queue.enqueue(JobSpec(time_ordered_id()))
    lease = await asyncio.wait_for(waiter, 4.5)
    assert lease is not None and lease.job.job_id == job.job_id
    assert time.monotonic() - started < 4.5  # woken by the enqueue, not by the end of its wait


async def test_a_waiting_lessee_returns_empty_when_the_wait_ends(queue: JobQueue) -> None:
    assert await queue.lease("c", wait=0.3) is None


async def test_an_idle_lessee_blocks_in_redis_instead_of_polling(queue: JobQueue,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tries = 0
    original = queue._try_lease

    async def counting(consumer: str, lease_ms: int) -> object:
        nonlocal tries
        tries += 1
        return await original(consumer, lease_ms)

    for _ in range(20):  # every enqueue pushed a wake-up token; those must not make an idle lessee spin
        await queue.enqueue(JobSpec(time_ordered_id()))
    assert len(await _drain(queue)) == 20
    monkeypatch.setattr(queue, "_try_lease", counting)
    assert await queue.lease("c", wait=1.5) is None
    assert tries <= 3  # one try before blocking, one per wake-up (none came), one at the end


async def test_a_blocked_lease_can_be_cancelled(queue: JobQueue) -> None:
    waiter = asyncio.create_task(queue.lease("c", wait=30))
    await asyncio.sleep(0.2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    job = await queue.enqueue(JobSpec(time_ordered_id()))
    lease = await queue.lease("d", wait=1)
    assert lease is not None and lease.job.job_id == job.job_id  # the cancelled waiter took nothing


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_a_cancelled_lease_call_never_strands_a_job(queue: JobQueue, yields: int) -> None:
    job = await queue.enqueue(JobSpec(time_ordered_id()))
    call = asyncio.create_task(queue.lease("c"))
    for _ in range(yields):  # cancel at different points: before the script, while it runs, after it replied
        await asyncio.sleep(0)
    call.cancel()
    try:
        lease = await call
    except asyncio.CancelledError:
        lease = None
    if lease is None:  # the caller never saw a lease: the job must be back, its delivery not counted
        for _ in range(50):
            current = await queue.get(job.job_id)
            if current.state == JobState.QUEUED:
                break
            await asyncio.sleep(0.02)
        assert (current.state, current.attempt) == (JobState.QUEUED, 0)
        again = await queue.lease("d")
        assert again is not None and again.job.job_id == job.job_id and again.job.attempt == 1


async def test_pause_stops_leasing_and_resume_restarts_it(queue: JobQueue) -> None:
    stats = await queue.pause()
    assert stats.paused
    job = await queue.enqueue(JobSpec(time_ordered_id()))  # still accepted
    assert await queue.lease("c") is None
    waiter = asyncio.create_task(queue.lease("c", wait=5))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    assert not (await queue.resume()).paused
    lease = await asyncio.wait_for(waiter, 4.5)
    assert lease is not None and lease.job.job_id == job.job_id


async def test_concurrent_lessees_never_share_a_job(make_queue: QueueFactory) -> None:
    queue = make_queue()
    other_replica = JobQueue(queue._redis, namespace=queue.namespace)  # a second service replica, same queue
    ids = {(await queue.enqueue(JobSpec(time_ordered_id(), priority=i % 5))).job_id for i in range(200)}
    leased: list[str] = []

    async def consume(q: JobQueue, name: str) -> None:
        while (lease := await q.lease(name)) is not None:
            leased.append(lease.job.job_id)
            await asyncio.sleep(0)

    await asyncio.gather(*(consume(q, f"c{i}") for i, q in enumerate([queue, other_replica] * 2)))
    assert Counter(leased) == Counter(ids)  # every job exactly once


async def test_blocked_lessees_share_a_stream_of_enqueues(queue: JobQueue) -> None:
    total = 60
    leased: list[str] = []

    async def consume(name: str) -> None:
        while len(leased) < total:
            lease = await queue.lease(name, wait=0.5)
            if lease is not None:
                leased.append(lease.job.job_id)

    consumers = [asyncio.create_task(consume(f"c{i}")) for i in range(4)]
    await asyncio.sleep(0.1)
    ids = []
    for _ in range(total):
        ids.append((await queue.enqueue(JobSpec(time_ordered_id()))).job_id)
        await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*consumers), 30)
    assert Counter(leased) == Counter(ids)


# -- leases: renew, lapse, complete ----------------------------------------------------------------------------


async def test_renewed_lease_survives_while_an_unrenewed_one_is_requeued(make_queue: QueueFactory,
                                                                         client: redis.Redis) -> None:
    queue = make_queue(lease_seconds=0.6)
    kept = await queue.enqueue(JobSpec(time_ordered_id(), priority=1))
    lost = await queue.enqueue(JobSpec(time_ordered_id(), priority=0))
    kept_lease, lost_lease = await queue.lease("a"), await queue.lease("b")
    assert kept_lease is not None and lost_lease is not None
    assert (kept_lease.job.job_id, lost_lease.job.job_id) == (kept.job_id, lost.job_id)

    for _ in range(6):  # 1.2 s: twice the lease, renewed every 0.2 s
        await asyncio.sleep(0.2)
        renewed = await queue.renew(kept_lease.lease_id, "a")
    assert renewed.expire_time > kept_lease.expire_time + 0.5

    result = await queue.sweep()
    assert result.requeued == (lost.job_id,) and not result.dead_lettered and not result.expired
    assert (await queue.get(kept.job_id)).state == JobState.LEASED
    requeued = await queue.get(lost.job_id)
    assert requeued.state == JobState.QUEUED and requeued.attempt == 1
    assert requeued.last_error is not None and requeued.last_error.reason == "EXECUTOR_LOST"
    assert await _outcomes(client, queue) == [{
        "job_id": lost.job_id, "state": "QUEUED", "attempt": "1", "last_error": "",
        "error": json.dumps({"code": 14, "reason": "EXECUTOR_LOST",
                             "message": "lease expired: the dispatcher or executor stopped renewing it"},
                            separators=(",", ":")),
    }]

    for stale in (queue.renew(lost_lease.lease_id, "b"),
                  queue.complete(lost_lease.lease_id, "b", CompletionOutcome.ACK)):
        with pytest.raises(ServiceError) as gone:
            await stale
        assert _reason(gone) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.LEASE_LOST)
    again = await queue.lease("c")
    assert again is not None and again.job.job_id == lost.job_id and again.job.attempt == 2
    assert again.lease_id != lost_lease.lease_id


async def test_a_lease_is_held_by_its_consumer_only(queue: JobQueue) -> None:
    await queue.enqueue(JobSpec(time_ordered_id()))
    lease = await queue.lease("a")
    assert lease is not None
    for call in (queue.renew(lease.lease_id, "b"), queue.complete(lease.lease_id, "b", CompletionOutcome.ACK),
                 queue.renew("garbage", "a"), queue.renew(f"{'0' * 32}.1.x", "a")):
        with pytest.raises(ServiceError) as lost:
            await call
        assert _reason(lost) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.LEASE_LOST)


async def test_ack_finishes_the_job_and_keeps_it_for_a_while(queue: JobQueue, client: redis.Redis) -> None:
    job = await queue.enqueue(JobSpec(time_ordered_id()))
    lease = await queue.lease("a")
    assert lease is not None
    done = await queue.complete(lease.lease_id, "a", CompletionOutcome.ACK)
    assert done.state == JobState.DONE and done.attempt == 1
    assert 0 < await client.ttl(f"{queue.namespace}:job:{job.job_id}") <= 24 * 3600
    assert (await queue.stats()).running == 0
    with pytest.raises(ServiceError) as twice:
        await queue.complete(lease.lease_id, "a", CompletionOutcome.ACK)
    assert _reason(twice) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.LEASE_LOST)
    assert await _outcomes(client, queue) == []  # an ACK is the consumer's own news: no outcome


async def test_retry_requeues_near_the_front_then_dead_letters(make_queue: QueueFactory,
                                                               client: redis.Redis) -> None:
    queue = make_queue(max_attempts=2)
    job = await queue.enqueue(JobSpec(time_ordered_id(), priority=5, tenant="t"))
    later = await queue.enqueue(JobSpec(time_ordered_id(), priority=5))
    oom = JobError(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "OUT_OF_MEMORY", "CUDA out of memory")

    first = await queue.lease("a")
    assert first is not None and first.job.job_id == job.job_id
    retried = await queue.complete(first.lease_id, "a", CompletionOutcome.RETRY, oom)
    assert retried.state == JobState.QUEUED and retried.attempt == 1 and retried.last_error == oom
    assert retried.position == 0  # its original enqueue time puts it ahead of `later` again
    assert await _outcomes(client, queue) == []  # the consumer asked for it: no outcome

    second = await queue.lease("b")
    assert second is not None and second.job.job_id == job.job_id and second.job.attempt == 2
    dead = await queue.complete(second.lease_id, "b", CompletionOutcome.RETRY, oom)
    assert dead.state == JobState.DEAD_LETTERED and dead.attempt == 2

    letters, cursor = await queue.list_dead_letters(10)
    assert cursor is None and len(letters) == 1
    assert letters[0].job.job_id == job.job_id and letters[0].job.tenant == "t"
    assert letters[0].last_error == oom and letters[0].dead_letter_time == pytest.approx(time.time(), abs=5)
    [outcome] = await _outcomes(client, queue)
    assert (outcome["job_id"], outcome["state"], outcome["attempt"]) == (job.job_id, "DEAD_LETTERED", "2")
    error = json.loads(outcome["error"])
    assert error["reason"] == "MAX_ATTEMPTS_EXCEEDED" and "CUDA out of memory" in error["message"]
    assert JobError.from_json(outcome["last_error"]) == oom
    remaining = await queue.lease("c")
    assert remaining is not None and remaining.job.job_id == later.job_id


async def test_a_lapsed_lease_at_the_last_attempt_is_dead_lettered(make_queue: QueueFactory,
                                                                   client: redis.Redis) -> None:
    queue = make_queue(max_attempts=1, lease_seconds=0.2)
    job = await queue.enqueue(JobSpec(time_ordered_id()))
    assert await queue.lease("a") is not None
    await asyncio.sleep(0.4)
    assert (await queue.sweep()).dead_lettered == (job.job_id,)
    assert (await queue.get(job.job_id)).state == JobState.DEAD_LETTERED
    [outcome] = await _outcomes(client, queue)
    assert (outcome["state"], outcome["attempt"]) == ("DEAD_LETTERED", "1")
    assert json.loads(outcome["last_error"])["reason"] == "EXECUTOR_LOST"
    letters, _ = await queue.list_dead_letters(10)
    assert [d.job.job_id for d in letters] == [job.job_id]
    assert letters[0].last_error is not None and letters[0].last_error.reason == "EXECUTOR_LOST"


async def test_dead_letters_page_newest_first(make_queue: QueueFactory) -> None:
    queue = make_queue(max_attempts=1)
    ids = []
    for _ in range(5):
        ids.append((await queue.enqueue(JobSpec(time_ordered_id()))).job_id)
        lease = await queue.lease("a")
        assert lease is not None
        await queue.complete(lease.lease_id, "a", CompletionOutcome.RETRY)
    seen, cursor = [], None
    while True:
        page, cursor = await queue.list_dead_letters(2, cursor)
        seen += [d.job.job_id for d in page]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert (await queue.stats()).dead_letters == 5


# -- deadlines -------------------------------------------------------------------------------------------------


async def test_an_overdue_job_is_never_leased_and_expires(queue: JobQueue, client: redis.Redis) -> None:
    overdue = await queue.enqueue(JobSpec(time_ordered_id(), priority=10, deadline=time.time() + 0.2))
    other = await queue.enqueue(JobSpec(time_ordered_id(), priority=0))
    await asyncio.sleep(0.4)
    lease = await queue.lease("a")
    assert lease is not None and lease.job.job_id == other.job_id
    expired = await queue.get(overdue.job_id)
    assert expired.state == JobState.EXPIRED and expired.attempt == 0
    assert expired.last_error is not None and expired.last_error.reason == "QUEUE_DEADLINE_EXCEEDED"
    [outcome] = await _outcomes(client, queue)
    assert (outcome["job_id"], outcome["state"], outcome["attempt"]) == (overdue.job_id, "EXPIRED", "0")
    assert json.loads(outcome["error"]) == {"code": 4, "reason": "QUEUE_DEADLINE_EXCEEDED",
                                            "message": "the job waited in the queue past its deadline"}
    assert (await queue.sweep()).total == 0  # already handled: no second outcome
    assert len(await _outcomes(client, queue)) == 1


async def test_the_janitor_expires_overdue_queued_jobs(queue: JobQueue, client: redis.Redis) -> None:
    overdue = await queue.enqueue(JobSpec(time_ordered_id(), deadline=time.time() + 0.2))
    patient = await queue.enqueue(JobSpec(time_ordered_id(), deadline=time.time() + 3600))
    await asyncio.sleep(0.4)
    assert (await queue.sweep()).expired == (overdue.job_id,)
    assert (await queue.get(overdue.job_id)).state == JobState.EXPIRED
    assert [j.job_id for j in (await queue.list_queued(10))[0]] == [patient.job_id]
    assert [(o["job_id"], o["state"]) for o in await _outcomes(client, queue)] == [(overdue.job_id, "EXPIRED")]
    with pytest.raises(ServiceError) as finished:
        await queue.enqueue(JobSpec(overdue.job_id))
    assert _reason(finished) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.JOB_NOT_QUEUED)


async def test_a_leased_job_past_its_deadline_is_not_expired(make_queue: QueueFactory) -> None:
    queue = make_queue()
    job = await queue.enqueue(JobSpec(time_ordered_id(), deadline=time.time() + 0.2))
    assert await queue.lease("a") is not None
    await asyncio.sleep(0.4)
    assert (await queue.sweep()).total == 0
    assert (await queue.get(job.job_id)).state == JobState.LEASED


# -- remove, reprioritise --------------------------------------------------------------------------------------


async def test_remove_a_queued_job_but_not_a_leased_one(queue: JobQueue) -> None:
    leased = await queue.enqueue(JobSpec(time_ordered_id(), priority=1))
    queued = await queue.enqueue(JobSpec(time_ordered_id()))
    assert await queue.lease("a") is not None
    removed = await queue.remove(queued.job_id)
    assert removed.state == JobState.REMOVED
    assert (await queue.remove(queued.job_id)).state == JobState.REMOVED  # a retried cancel is fine
    assert await queue.lease("a") is None and (await queue.stats()).queued_total == 0
    with pytest.raises(ServiceError) as running:
        await queue.remove(leased.job_id)
    assert _reason(running) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.JOB_NOT_QUEUED)
    for call in (queue.remove, queue.get):
        with pytest.raises(ServiceError) as unknown:
            await call(time_ordered_id())
        assert _reason(unknown) == (grpc.StatusCode.NOT_FOUND, Reason.RESOURCE_NOT_FOUND)


async def test_reprioritise_keeps_the_original_enqueue_time(queue: JobQueue) -> None:
    a, b, c = [(await queue.enqueue(JobSpec(time_ordered_id()))).job_id for _ in range(3)]
    moved = await queue.reprioritize(c, 10)
    assert moved.priority == 10 and moved.position == 0
    assert [j.job_id for j in (await queue.list_queued(10))[0]] == [c, a, b]
    await queue.reprioritize(a, 10)
    assert [j.job_id for j in (await queue.list_queued(10))[0]] == [a, c, b]  # `a` is older than `c`
    await queue.reprioritize(a, 0)
    await queue.reprioritize(c, 0)
    assert [j.job_id for j in (await queue.list_queued(10))[0]] == [a, b, c]
    with pytest.raises(ServiceError) as bad:
        await queue.reprioritize(a, 1000)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert await queue.lease("x") is not None
    with pytest.raises(ServiceError) as leased:
        await queue.reprioritize(a, 3)
    assert _reason(leased) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.JOB_NOT_QUEUED)


# -- stats, janitor --------------------------------------------------------------------------------------------


async def test_stats(make_queue: QueueFactory, client: redis.Redis) -> None:
    queue = make_queue(max_queue_size=50, max_attempts=1)
    empty = await queue.stats()
    assert (empty.queued_total, empty.depths, empty.oldest_age, empty.recent_wait.samples) == (0, (), 0.0, 0)
    assert (empty.executors_free, empty.executors_busy, empty.max_queue_size) == (0, 0, 50)

    for priority in (5, 5, 0, -7, -7, -7):
        await queue.enqueue(JobSpec(time_ordered_id(), priority=priority))
    await asyncio.sleep(0.25)
    await client.hset(f"{queue.namespace}:fleet", mapping={"free": 3, "busy": 2})
    first = await queue.lease("a")  # waited ≥ 0.25 s
    assert first is not None
    await queue.complete(first.lease_id, "a", CompletionOutcome.RETRY)  # dead-lettered (1 attempt)
    assert await queue.lease("a") is not None

    stats = await queue.stats()
    assert stats.depths == ((0, 1), (-7, 3))
    assert stats.queued_total == 4 and stats.running == 1 and stats.dead_letters == 1
    assert stats.oldest_age >= 0.25
    assert stats.recent_wait.samples == 2
    assert 0.25 <= stats.recent_wait.p50 <= stats.recent_wait.p90 <= stats.recent_wait.p99
    assert (stats.executors_free, stats.executors_busy, stats.paused) == (3, 2, False)
    assert REGISTRY.get_sample_value("queue_depth", {"priority": "-7"}) == 3
    assert (REGISTRY.get_sample_value("queue_wait_time_seconds_count") or 0) >= 2


async def test_wait_samples_are_capped(make_queue: QueueFactory) -> None:
    queue = make_queue(wait_samples=3)
    for _ in range(5):
        await queue.enqueue(JobSpec(time_ordered_id()))
    await _drain(queue)
    assert (await queue.stats()).recent_wait.samples == 3


async def test_the_janitor_loop_requeues_lapsed_leases(make_queue: QueueFactory) -> None:
    queue = make_queue(lease_seconds=0.2)
    job = await queue.enqueue(JobSpec(time_ordered_id()))
    assert await queue.lease("gone") is not None
    waiter = asyncio.create_task(queue.lease("survivor", wait=10))  # woken by the re-queue
    janitor = asyncio.create_task(Janitor(queue, 0.1).run())
    try:
        lease = await asyncio.wait_for(waiter, 9)
    finally:
        janitor.cancel()
        await asyncio.gather(janitor, return_exceptions=True)
    assert lease is not None and lease.job.job_id == job.job_id and lease.job.attempt == 2


async def test_concurrent_sweeps_move_each_job_once(make_queue: QueueFactory, client: redis.Redis) -> None:
    queue = make_queue(lease_seconds=0.1)
    for _ in range(30):
        await queue.enqueue(JobSpec(time_ordered_id()))
    await _drain(queue)
    await asyncio.sleep(0.3)
    results = await asyncio.gather(*(queue.sweep() for _ in range(4)))
    requeued = [job_id for result in results for job_id in result.requeued]
    assert len(requeued) == len(set(requeued)) == 30
    assert len(await _outcomes(client, queue)) == 30


def test_outcomes_stream_name() -> None:
    assert outcomes_stream() == "cm:q:outcomes"
    assert outcomes_stream("x") == "x:outcomes"
