"""Per-principal token buckets in Redis, and the revoked-keys list, checked together in one round trip.

One Lua script per request: is the credential's API key on the principal's revoked list (so tokens exchanged for a
key die with it, and an API key dies at once on every replica), and is there a token in the principal's bucket.
Both keys carry the principal in a hash tag, so the script is valid on Redis Cluster. The bucket refills
continuously at `rate` tokens per second up to `burst`; time is Redis's own (`TIME`), so replicas' clocks do not
matter. A refused request learns how long until the next token: the RetryInfo / Retry-After it is answered with.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "cm:auth"

# KEYS[1] bucket hash, KEYS[2] revoked-keys set; ARGV[1] rate/s, ARGV[2] burst, ARGV[3] key id ('' = none).
# Returns {allowed (1, 0; -1 = revoked), retry after ms}.
_SCRIPT = """
if ARGV[3] ~= '' and redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1 then
  return {-1, 0}
end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
if rate <= 0 then
  return {1, 0}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


@dataclass(frozen=True)
class Admission:
    allowed: bool
    revoked: bool = False
    retry_after_seconds: float = 0.0


ALLOWED = Admission(True)


class RateLimiter:
    """`admit(principal, rate, burst, key_id)`: one request's admission. Without Redis (an error) it fails open:
    rate limiting protects capacity, and authentication does not depend on it."""

    def __init__(self, client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._redis = client
        self._namespace = namespace
        self._script = client.register_script(_SCRIPT)
        self._last_warning = 0.0

    def bucket_key(self, principal_id: str) -> str:
        return f"{self._namespace}:{{{principal_id}}}:bucket"

    def revoked_key(self, principal_id: str) -> str:
        return f"{self._namespace}:{{{principal_id}}}:revoked"

    async def admit(self, principal_id: str, requests_per_second: float, burst: int, key_id: str = "") -> Admission:
        if requests_per_second <= 0 and not key_id:
            return ALLOWED
        try:
            allowed, wait_ms = await self._script(
                keys=[self.bucket_key(principal_id), self.revoked_key(principal_id)],
                args=[repr(float(max(requests_per_second, 0.0))), str(max(burst, 1)), key_id])
        except RedisError as exc:
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                log.warning("rate limiting skipped: Redis unavailable (%s)", exc)
            return ALLOWED
        if int(allowed) < 0:
            return Admission(False, revoked=True)
        if int(allowed) == 1:
            return ALLOWED
        return Admission(False, retry_after_seconds=max(int(wait_ms), 1) / 1000)

    async def mark_revoked(self, principal_id: str, key_ids: Iterable[str], ttl_seconds: float) -> None:
        """Puts keys on the principal's revoked list for `ttl_seconds` (the longest a token may live): every
        replica refuses them, and the tokens exchanged for them, from the next request on."""
        ids = list(key_ids)
        if not ids:
            return
        key = self.revoked_key(principal_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, *ids)
            pipe.expire(key, max(1, math.ceil(ttl_seconds)))
            await pipe.execute()
