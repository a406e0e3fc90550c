"""Root test configuration: the infrastructure fixtures and the test markers."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.infra"]

MARKERS = {
    "unit": "fast, in-process, no external servers",
    "integration": "starts or talks to real servers (PostgreSQL, Redis/Valkey, SeaweedFS, Envoy)",
    "e2e": "the whole mesh end to end, through Envoy",
    "gpu": "needs an NVIDIA GPU",
    "slow": "takes more than a few seconds",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
