"""Fixtures for the built-in node tests: a bound node runtime with its own input/output/temp directories."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gpu_executor.engine.runtime import NodeRuntime, bind, bind_input_names, unbind

T = TypeVar("T")


@dataclass
class Rig:
    runtime: NodeRuntime

    def add_input(self, name: str, data: bytes) -> Path:
        """Place an input file and register it with the execution, like an upload would."""
        path = self.runtime.input_dir / name
        path.write_bytes(data)
        self.runtime.inputs[name] = path
        return path


def with_input_names(names: tuple[str, ...], fn: Callable[[], T]) -> T:
    """Run `fn` in a copy of the current context where the execution's input names are `names`."""

    def run() -> T:
        bind_input_names(names)
        return fn()

    return contextvars.copy_context().run(run)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    dirs = {name: tmp_path / name for name in ("input", "output", "temp")}
    for path in dirs.values():
        path.mkdir()
    prompt: dict[str, Any] = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4}}}
    runtime = NodeRuntime(
        execution_id="exec-1",
        node_id="1",
        class_type="Test",
        prompt=prompt,
        extra_pnginfo={},
        input_dir=dirs["input"],
        output_dir=dirs["output"],
        temp_dir=dirs["temp"],
    )
    token = bind(runtime)
    try:
        yield Rig(runtime)
    finally:
        unbind(token)
