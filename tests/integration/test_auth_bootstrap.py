"""First start: the admin key is created once and written 0600; the command line creates tenants and keys."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from service_runtime.auth.interceptor import build_verifier
from service_runtime.db import Database, migrate
from service_runtime.settings import Settings
from services.auth.bootstrap import admin_key_path, ensure_admin_key, ensure_admin_key_async
from services.auth.repository import AuthRepository

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _settings(home: Path, url: str) -> Settings:
    return Settings(home=home, database_url=url, secret_key="bootstrap-test")


async def test_admin_key_is_created_once_and_written_0600(database: Database, tmp_path: Path) -> None:
    settings = _settings(tmp_path, database.url)
    key = await ensure_admin_key_async(settings, database)
    assert key is not None and key.startswith("cm_")
    path = admin_key_path(settings)
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await ensure_admin_key_async(settings, database) is None
    assert path.read_text().strip() == key  # never rewritten
    caller = await build_verifier(settings, database).authenticate(key)
    assert caller.tenant == "default" and caller.has("tenants.admin") and caller.service_account
    assert (await AuthRepository(database).get_tenant("default")) is not None


def _cli(home: Path, url: str, *args: str) -> dict[str, str]:
    env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_DATABASE_URL": url,
           "COMFYMESH_SECRET_KEY": "bootstrap-test"}
    result = subprocess.run([sys.executable, "-m", "services.auth", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, str] = json.loads(result.stdout)
    return parsed


def test_command_line_bootstrap_tenants_and_keys(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'comfymesh.db'}"
    migrate.upgrade(url)
    first = _cli(tmp_path, url, "bootstrap")
    assert first["created"] and first["api_key"].startswith("cm_")
    assert stat.S_IMODE((tmp_path / "admin.key").stat().st_mode) == 0o600
    assert not _cli(tmp_path, url, "bootstrap")["created"]
    ensure_admin_key(_settings(tmp_path, url))  # the synchronous form is a no-op now as well

    tenant = _cli(tmp_path, url, "create-tenant", "--name", "Acme", "--tier", "pro")
    created = _cli(tmp_path, url, "create-key", "--tenant", tenant["tenant_id"], "--role", "developer",
                   "--name", "ci")
    narrowed = _cli(tmp_path, url, "create-key", "--tenant", tenant["tenant_id"], "--principal",
                    created["principal_id"], "--scope", "executions.read")
    assert created["api_key"] != narrowed["api_key"]

    async def check() -> None:
        db = Database(url)
        try:
            verifier = build_verifier(_settings(tmp_path, url), db)
            developer = await verifier.authenticate(created["api_key"])
            assert developer.tenant == tenant["tenant_id"] and developer.has("executions.write")
            assert developer.tier == "PRO"
            reader = await verifier.authenticate(narrowed["api_key"])
            assert reader.scopes == {"executions.read"}
        finally:
            await db.dispose()

    asyncio.run(check())
    env = {**os.environ, "COMFYMESH_HOME": str(tmp_path), "COMFYMESH_DATABASE_URL": url}
    refused = subprocess.run([sys.executable, "-m", "services.auth", "create-key", "--tenant", "nope", "--role",
                              "viewer"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "no tenant" in refused.stderr
