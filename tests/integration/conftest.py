"""Database fixtures: every repository suite runs against SQLite and PostgreSQL through the same code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service_runtime.db import Database, migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated database; PostgreSQL is emptied after each test by migrating down."""
    await migrate.upgrade_async(database_url)
    db = Database(database_url)
    yield db
    await db.dispose()
    await asyncio.to_thread(migrate.downgrade, database_url, "base")
