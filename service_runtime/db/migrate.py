"""Runs Alembic migrations programmatically (no alembic.ini): `python -m service_runtime.db upgrade|downgrade|current`.

The migration scripts live in `migrations/versions` and are plain DDL (they import no service code), so this
bottom package stays free of service imports while owning the one schema history of the platform.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from service_runtime.db.engine import create_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ConfigParser interpolates '%'; URLs with escaped passwords contain them.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, revision: str = "head") -> None:
    """Brings the schema to `revision`. Safe to run concurrently with itself only on PostgreSQL (it locks)."""
    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    async def read() -> str | None:
        from alembic.runtime.migration import MigrationContext

        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
        finally:
            await engine.dispose()

    return asyncio.run(read())


async def upgrade_async(url: str, revision: str = "head") -> None:
    """For callers inside an event loop (the env.py runs its own loop, so it goes to a thread)."""
    await asyncio.to_thread(upgrade, url, revision)
