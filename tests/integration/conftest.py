"""Database fixtures: every repository suite runs against SQLite and PostgreSQL through the same code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service_runtime.db import Database, migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    # A database of its own per test: suites stay independent of each other and of their order.
    databases = request.getfixturevalue("postgres_databases")
    url: str = databases.create()
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated database (fresh for each test)."""
    await migrate.upgrade_async(database_url)
    db = Database(database_url)
    yield db
    await db.dispose()
