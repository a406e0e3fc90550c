"""Alembic environment: async engines for SQLite and PostgreSQL, online migrations only."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from service_runtime.db.engine import create_engine


def _run(connection: Connection) -> None:
    # render_as_batch lets ALTER-style migrations work on SQLite, which rewrites the table.
    context.configure(connection=connection, target_metadata=None, render_as_batch=True,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run_async())
