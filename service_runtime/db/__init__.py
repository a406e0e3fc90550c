"""Database access: SQLAlchemy 2 async engines for SQLite (embedded default) and PostgreSQL, and Alembic migrations."""

from service_runtime.db.base import Base, UtcDateTime
from service_runtime.db.engine import Database

__all__ = ["Base", "Database", "UtcDateTime"]
