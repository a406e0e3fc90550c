"""The test rig itself: the shared PostgreSQL and Redis fixtures hand out working, private databases."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.infra import PostgresDatabases

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_postgres_url_is_this_sessions_own_database(postgres_url: str,
                                                          postgres_databases: PostgresDatabases) -> None:
    # Session-scoped: earlier tests of this session (this xdist worker) may have migrated it already; what
    # matters is that no other session shares it.
    assert postgres_url.startswith("postgresql+asyncpg://")
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            name = (await conn.execute(text("SELECT current_database()"))).scalar_one()
            assert name.startswith("comfymesh_test_") and name in postgres_databases.names
    finally:
        await engine.dispose()


async def _public_tables(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"))
            return int(tables.scalar_one())
    finally:
        await engine.dispose()


def test_the_database_factory_hands_out_fresh_empty_databases(postgres_databases: PostgresDatabases) -> None:
    first, second = postgres_databases.create(), postgres_databases.create()
    assert first != second
    assert asyncio.run(_public_tables(first)) == 0 and asyncio.run(_public_tables(second)) == 0


@pytest.mark.asyncio
async def test_redis_url_is_a_private_database(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping()
        assert await client.set("comfymesh:test:key", "value", ex=60)
        assert await client.get("comfymesh:test:key") == b"value"
    finally:
        await client.aclose()
