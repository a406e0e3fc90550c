"""Migrations apply, revert and re-apply on both databases, and `python -m service_runtime.db` drives them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.script import ScriptDirectory

from service_runtime.db import migrate

pytestmark = pytest.mark.integration


def _head() -> str:
    """The one head of the migration chain (several heads would be a branch nobody merged)."""
    heads = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, heads
    return str(heads[0])


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == _head()
    migrate.downgrade(database_url, "base")
    assert migrate.current_revision(database_url) is None
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == _head()
    migrate.downgrade(database_url, "base")


def test_command_line(database_url: str) -> None:
    env = {**os.environ, "COMFYMESH_DATABASE_URL": database_url}
    for args, expected in ((["upgrade"], ""), (["current"], _head()), (["downgrade", "base"], ""),
                           (["current"], "(empty)")):
        result = subprocess.run([sys.executable, "-m", "service_runtime.db", *args], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
