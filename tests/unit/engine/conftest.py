from __future__ import annotations

from pathlib import Path

import pytest

from gpu_executor.engine.engine import Engine, ExecutionRequest
from gpu_executor.engine.registry import NodeRegistry, build_registry

PACKS = Path(__file__).parent / "packs"


@pytest.fixture(scope="session")
def registry() -> NodeRegistry:
    """The test pack only (no torch-based built-in nodes): the engine core is what is under test."""
    return build_registry([PACKS], builtin=False)


@pytest.fixture
def engine(registry: NodeRegistry) -> Engine:

    return Engine(registry)


@pytest.fixture
def calls(registry: NodeRegistry) -> dict[str, int]:
    """The pack's call counter, reset (the pack is loaded under its own module name, so take it from a class)."""
    import sys

    module = sys.modules[registry.specs["Add"].cls.__module__]
    module.CALLS.clear()
    return module.CALLS  # type: ignore[no-any-return]


def request(tmp_path: Path, prompt: object, **kwargs: object) -> ExecutionRequest:
    for name in ("out", "temp", "in"):
        (tmp_path / name).mkdir(exist_ok=True)
    return ExecutionRequest(execution_id="e1", prompt=prompt, output_dir=tmp_path / "out", temp_dir=tmp_path / "temp",
                            input_dir=tmp_path / "in", **kwargs)  # type: ignore[arg-type]
