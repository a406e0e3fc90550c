"""Fixtures for the model-file tests: the cached tiny SD1 checkpoint (full-shape CLIP-L, so building it the first
time takes a few seconds) and small modules built without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_executor.diffusion.models.loader import LoadedCheckpoint, load_checkpoint
from gpu_executor.diffusion.models.testing import make_tiny_sd1_checkpoint


@pytest.fixture(scope="session")
def tiny_sd1_path() -> Path:
    """The cached tiny SD1 checkpoint (read-only: tests must not modify it)."""
    return make_tiny_sd1_checkpoint(seed=0, levels=1)


@pytest.fixture(scope="session")
def tiny_sd1(tiny_sd1_path: Path) -> LoadedCheckpoint:
    """The checkpoint loaded once per session; tests that patch weights must restore them."""
    return load_checkpoint(tiny_sd1_path)
