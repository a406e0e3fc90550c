"""The test rig itself: the shared PostgreSQL and Redis fixtures hand out working, private databases."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_postgres_url_is_a_fresh_database(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://")
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            name = (await conn.execute(text("SELECT current_database()"))).scalar_one()
            assert name.startswith("comfymesh_test_")
            tables = await conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            )
            assert tables.scalar_one() == 0
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_redis_url_is_a_private_database(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping()
        assert await client.set("comfymesh:test:key", "value", ex=60)
        assert await client.get("comfymesh:test:key") == b"value"
    finally:
        await client.aclose()
