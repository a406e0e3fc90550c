"""The whole platform as real processes, on PostgreSQL, the machine's Redis and SeaweedFS, behind Envoy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.platform import Endpoints, LocalPlatform
from service_runtime.processes import SeaweedFSServer
from service_runtime.settings import Settings
from tests.e2e.node_pack import PACK_SOURCE
from tests.fixtures.infra import PostgresDatabases

QUEUE_MAX_SIZE = 8
COST_PER_SECOND_USD = 10_000


def write_node_pack(home: Path) -> Path:
    pack = home / "custom_nodes"
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "e2e_nodes.py").write_text(PACK_SOURCE)
    return pack


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases, redis_url: str,
             seaweedfs: SeaweedFSServer) -> Iterator[LocalPlatform]:
    home: Path = tmp_path_factory.mktemp("platform")
    pack = write_node_pack(home)
    postgres_url = postgres_databases.create()  # its own: the platform migrates it
    settings = Settings(home=home, database_url=postgres_url, redis_url=redis_url, s3_endpoint=seaweedfs.endpoint,
                        s3_access_key=seaweedfs.access_key, s3_secret_key=seaweedfs.secret_key,
                        environment="test", log_format="json")
    # One executor (queue order is observable); a small queue so the full-queue refusal can be reached.
    platform = LocalPlatform(settings, free_ports=True, extra_env={
        "CUSTOM_NODES_DIRS": str(pack), "QUEUE_MAX_SIZE": str(QUEUE_MAX_SIZE), "INTERRUPT_GRACE_SECONDS": "3",
        "QUEUE_JANITOR_INTERVAL_SECONDS": "0.5",
        # A steep price, so one execution on the CPU executor exceeds a basic tenant's monthly budget ($10).
        "COST_PER_DEVICE_SECOND_USD": f"default={COST_PER_SECOND_USD}"})
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture(scope="session")
def endpoints(platform: LocalPlatform) -> Endpoints:
    return platform.endpoints
