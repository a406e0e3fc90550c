"""The whole platform as real processes, on PostgreSQL, the machine's Redis and SeaweedFS, behind Envoy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.platform import Endpoints, LocalPlatform
from service_runtime.processes import SeaweedFSServer
from service_runtime.settings import Settings
from tests.fixtures.infra import PostgresDatabases


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases, redis_url: str,
             seaweedfs: SeaweedFSServer) -> Iterator[LocalPlatform]:
    home: Path = tmp_path_factory.mktemp("platform")
    postgres_url = postgres_databases.create()  # its own: the platform migrates it
    settings = Settings(home=home, database_url=postgres_url, redis_url=redis_url, s3_endpoint=seaweedfs.endpoint,
                        s3_access_key=seaweedfs.access_key, s3_secret_key=seaweedfs.secret_key,
                        environment="test", log_format="json")
    platform = LocalPlatform(settings, free_ports=True)
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture(scope="session")
def endpoints(platform: LocalPlatform) -> Endpoints:
    return platform.endpoints
