"""The queue janitor: re-queues lapsed leases, expires overdue queued jobs, refreshes the depth gauge.

Each sweep is a set of atomic Lua scripts, so any number of replicas may run their janitors at once: a job is
moved by exactly one of them. Between sweeps the loop sleeps (`queue_janitor_interval_seconds`).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from services.queue.job_queue import JobQueue, SweepResult

log = logging.getLogger(__name__)


class Janitor:
    def __init__(self, queue: JobQueue, interval_seconds: float) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._queue = queue
        self._interval = interval_seconds

    async def sweep_once(self) -> SweepResult:
        """One sweep, then the stats refresh that exports `queue_depth`."""
        result = await self._queue.sweep()
        if result.total:
            log.info("queue janitor: %d re-queued, %d dead-lettered, %d expired", len(result.requeued),
                     len(result.dead_lettered), len(result.expired),
                     extra={"requeued": list(result.requeued[:20]), "dead_lettered": list(result.dead_lettered[:20]),
                            "expired": list(result.expired[:20])})
        await self._queue.stats()
        return result

    async def run(self) -> None:
        """Sweeps forever (cancel to stop). A Redis outage is logged and retried at the next interval."""
        while True:
            try:
                await self.sweep_once()
            except RedisError as exc:
                log.warning("queue janitor: sweep failed (%s); retrying in %.1fs", exc, self._interval)
            await asyncio.sleep(self._interval)
