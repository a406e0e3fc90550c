"""Root test configuration: the infrastructure fixtures and the test markers."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the machine's cores: one compute thread each, or torch's OpenMP threads spin
    # against each other and a two-second diffusion test takes a minute. Set before torch is imported, and
    # inherited by the executor processes the tests start.
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

pytest_plugins = ["tests.fixtures.infra", "tests.fixtures.hang_report"]

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
