"""The Redis client factory against real servers: the shared one, and one of our own that restarts."""

from __future__ import annotations

import pytest

from service_runtime.processes import ValkeyServer
from service_runtime.redis_client import create_redis

pytestmark = pytest.mark.integration


async def test_commands_work(redis_url: str) -> None:
    client = create_redis(redis_url)
    try:
        await client.set("comfymesh:test:key", b"v", ex=10)
        assert await client.get("comfymesh:test:key") == b"v"
    finally:
        await client.aclose()


async def test_client_survives_a_server_restart(redis_server: ValkeyServer) -> None:
    client = create_redis(redis_server.url)
    try:
        await client.set("k", b"before")
        redis_server.stop()
        redis_server.start()
        # The pooled connection died with the server; the client reconnects on its own.
        assert await client.get("k") == b"before"  # persistent server: the data survived too
    finally:
        await client.aclose()


def test_empty_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="COMFYMESH_REDIS_URL"):
        create_redis("")
