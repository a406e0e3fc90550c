"""Settings come from COMFYMESH_* variables, with defaults that run on one machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_runtime.settings import Settings

pytestmark = pytest.mark.unit


def test_environment_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYMESH_GATEWAY_PORT", "9999")
    monkeypatch.setenv("COMFYMESH_QUEUE_ADDR", "queue:50052")
    monkeypatch.setenv("COMFYMESH_HOME", "/tmp/x")
    settings = Settings()
    assert settings.gateway_port == 9999
    assert settings.address_of("queue") == "queue:50052"
    assert settings.address_of("model") == "127.0.0.1:50054"
    assert settings.resolved_database_url == "sqlite+aiosqlite:////tmp/x/comfymesh.db"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYMESH_GATEWAY_PORT", "not-a-port")
    with pytest.raises(ValueError, match="gateway_port"):
        Settings()


def test_metrics_port_follows_the_grpc_port_unless_set() -> None:
    assert Settings().metrics_port_for(50051) == 51051
    assert Settings(metrics_port=0).metrics_port_for(50051) == 0
    assert Settings(database_url="postgresql+asyncpg://db/x").resolved_database_url == "postgresql+asyncpg://db/x"
    assert Settings(home=Path("rel")).resolved_database_url.endswith("/rel/comfymesh.db")
