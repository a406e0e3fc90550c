"""Applies the queue's own decisions to the execution rows: re-queued after a lost lease, dead-lettered, expired.

The queue service publishes them, in the same atomic step as the change, to a Redis stream (see
services/queue/job_queue.py, `outcomes_stream`); this consumer group applies each one and acknowledges it only
after the row is written, so a crash in between replays it (every handler is idempotent: the row only moves while
it is not terminal). Entries left pending by a dead replica are claimed after a minute.
"""

from __future__ import annotations

import json
import logging
from typing import cast

import grpc
import redis.asyncio as redis
from google.rpc import status_pb2
from redis.exceptions import ResponseError

from service_runtime.errors import Reason, ServiceError
from service_runtime.errors.status import to_status_proto
from service_runtime.redis_client import as_text
from services.execution_store.lifecycle import ExecutionLifecycle
from services.execution_store.repository import ExecutionRepository

log = logging.getLogger(__name__)
GROUP = "execution-service"
BLOCK_MS = 5000
CLAIM_IDLE_MS = 60_000
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _error(raw: bytes | None, fallback: Reason, message: str) -> status_pb2.Status:
    try:
        values = json.loads(raw) if raw else {}
    except ValueError:
        values = {}
    code = grpc.StatusCode.UNAVAILABLE
    for candidate in grpc.StatusCode:
        if candidate.value[0] == values.get("code"):
            code = candidate
    try:
        reason = Reason(values.get("reason") or fallback)
    except ValueError:
        reason = fallback
    return to_status_proto(ServiceError(code, reason, str(values.get("message") or message)))


class OutcomeConsumer:
    def __init__(self, client: redis.Redis, repository: ExecutionRepository, lifecycle: ExecutionLifecycle, *,
                 stream: str, consumer: str) -> None:
        self._redis = client
        self._repository = repository
        self._lifecycle = lifecycle
        self._stream = stream
        self._consumer = consumer

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        await self._ensure_group()
        while await self._drain("0"):  # what this consumer left pending before a restart
            pass
        while True:
            await self._claim_abandoned()
            await self._drain(">", block_ms=BLOCK_MS)

    async def _drain(self, start: str, block_ms: int | None = None) -> int:
        reply = cast(list[tuple[bytes, _Entries]], await self._redis.xreadgroup(
            GROUP, self._consumer, {self._stream: start}, count=100, block=block_ms))
        handled = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                await self.apply(fields)
                await self._redis.xack(self._stream, GROUP, entry_id)
                handled += 1
        return handled

    async def _claim_abandoned(self) -> None:
        cursor = "0-0"
        while True:
            reply = await self._redis.xautoclaim(self._stream, GROUP, self._consumer, CLAIM_IDLE_MS,
                                                 start_id=cursor, count=100)
            cursor = as_text(reply[0])
            for entry_id, fields in reply[1]:
                if fields:
                    await self.apply(fields)
                await self._redis.xack(self._stream, GROUP, entry_id)
            if cursor == "0-0":
                return

    async def apply(self, fields: dict[bytes, bytes]) -> None:
        job_id = fields.get(b"job_id", b"").decode()
        state = fields.get(b"state", b"").decode()
        attempt = int(fields.get(b"attempt", b"0") or 0)
        record = await self._repository.get_internal(job_id)
        if record is None or record.state.terminal:
            return
        if state == "QUEUED":
            await self._lifecycle.retrying(job_id, attempt, _error(
                fields.get(b"error"), Reason.EXECUTOR_LOST, "the lease lapsed: the dispatcher or executor stopped"))
        elif state == "DEAD_LETTERED":
            last = _error(fields.get(b"error"), Reason.EXECUTOR_LOST, "unknown")
            await self._lifecycle.fail(record, attempt, to_status_proto(ServiceError(
                grpc.StatusCode.ABORTED, Reason.MAX_ATTEMPTS_EXCEEDED,
                f"gave up after {attempt} attempts; the last failed with: {last.message}",
                {"last_error": last.message})))
        elif state == "EXPIRED":
            await self._lifecycle.fail(record, attempt, to_status_proto(ServiceError(
                grpc.StatusCode.DEADLINE_EXCEEDED, Reason.QUEUE_DEADLINE_EXCEEDED,
                "the execution waited in the queue past its queue_timeout")))
        else:
            log.warning("unknown queue outcome %r for %s", state, job_id)
