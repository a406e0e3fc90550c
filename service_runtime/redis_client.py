"""The Redis client factory: one pooled asyncio client per process, with timeouts and reconnect backoff."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def create_redis(url: str, *, max_connections: int = 256) -> redis.Redis:
    """A client that survives a Redis restart: commands retry on connection errors with backoff.

    The pool blocks when all its connections are in use (up to 10 s) instead of failing, so a burst of requests
    queues for a connection rather than erroring. Blocking reads (BLPOP, XREAD BLOCK) set their own timeouts;
    `socket_timeout` is left unset for that reason and `health_check_interval` detects dead idle connections.
    """
    if not url:
        raise ValueError("COMFYMESH_REDIS_URL is empty; `make run` starts a local server, otherwise set it")
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=6),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
    )
    return redis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def as_text(value: bytes | str) -> str:
    """A reply value as text (the client returns bytes; redis-py's types also allow str)."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
