"""Migrations apply, revert and re-apply on both databases, and `python -m service_runtime.db` drives them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service_runtime.db import migrate

pytestmark = pytest.mark.integration


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == "0001_executions"
    migrate.downgrade(database_url, "base")
    assert migrate.current_revision(database_url) is None
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == "0001_executions"
    migrate.downgrade(database_url, "base")


def test_command_line(database_url: str) -> None:
    env = {**os.environ, "COMFYMESH_DATABASE_URL": database_url}
    for args, expected in ((["upgrade"], ""), (["current"], "0001_executions"), (["downgrade", "base"], ""),
                           (["current"], "(empty)")):
        result = subprocess.run([sys.executable, "-m", "service_runtime.db", *args], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
