"""Cancellation requests, visible to every dispatcher replica: a flag per execution in Redis.

The workflow service sets the flag before it tries to remove the job from the queue; a dispatcher that leased the
job in between sees the flag before it calls the executor (or when the executor reports the interrupt), so a cancel
is never lost in the gap between the queue and the executor.
"""

from __future__ import annotations

import redis.asyncio as redis

from service_runtime.redis_client import as_text

FLAG_TTL_SECONDS = 7 * 24 * 3600


class CancelFlags:
    def __init__(self, client: redis.Redis, namespace: str = "cm:cancel") -> None:
        self._redis = client
        self._ns = namespace

    async def request(self, execution_id: str, reason: str) -> None:
        await self._redis.set(f"{self._ns}:{execution_id}", reason or "cancelled", ex=FLAG_TTL_SECONDS)

    async def reason(self, execution_id: str) -> str | None:
        """The cancel reason when a cancel was requested, else None."""
        value = await self._redis.get(f"{self._ns}:{execution_id}")
        return as_text(value) if value is not None else None
