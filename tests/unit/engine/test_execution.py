"""Running graphs: order, list semantics, events, timings, failures, interrupts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from gpu_executor.engine.engine import Engine
from gpu_executor.engine.events import (
    Cancelled,
    CollectingSink,
    Failed,
    NodeExecuted,
    NodeProgress,
    NodeStarted,
    Started,
    Succeeded,
)
from tests.unit.engine.conftest import request

pytestmark = pytest.mark.unit


def chain(seed: int = 1) -> dict[str, Any]:
    return {
        "1": {"class_type": "Number", "inputs": {"value": seed}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 2}},
        "3": {"class_type": "Scale", "inputs": {"x": ["2", 0], "mode": "double", "factor": 1.5}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    }


def test_runs_in_dependency_order_with_events(engine: Engine, tmp_path: Path) -> None:
    sink = CollectingSink()
    final = engine.execute(request(tmp_path, chain(4)), sink)
    assert isinstance(final, Succeeded) and sink.terminal is final
    assert isinstance(sink.events[0], Started)
    assert [e.node_id for e in sink.of(NodeStarted)] == ["1", "2", "3", "4"]
    executed = sink.of(NodeExecuted)
    assert [(e.node_id, e.ui) for e in executed] == [("4", {"values": [18.0], "node": ["4"]})]
    assert [t.node_id for t in final.timings] == ["1", "2", "3", "4"]
    assert all(t.seconds >= 0 and not t.cached for t in final.timings)
    assert final.ui == {"4": {"values": [18.0], "node": ["4"]}}


def test_list_semantics(engine: Engine, tmp_path: Path) -> None:
    """Listify emits [0, 1, 2]: Add is mapped over it (3 calls), Total sees the whole list at once."""
    prompt = {
        "1": {"class_type": "Listify", "inputs": {"count": 3}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10}},
        "3": {"class_type": "Total", "inputs": {"values": ["2", 0]}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
    }
    final = engine.execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(final, Succeeded)
    assert final.ui["4"]["values"] == [33]
    assert final.ui["5"]["values"] == [10, 11, 12]  # the output node mapped too, its UI merged


def test_shorter_lists_repeat_their_last_value(engine: Engine, tmp_path: Path) -> None:
    prompt = {
        "1": {"class_type": "Listify", "inputs": {"count": 3}},
        "2": {"class_type": "Listify", "inputs": {"count": 1}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 0, "c": ["2", 0]}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    }
    final = engine.execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(final, Succeeded) and final.ui["4"]["values"] == [0, 1, 2]


def test_invalid_graph_fails_without_running(engine: Engine, tmp_path: Path, calls: dict[str, int]) -> None:
    prompt = {**chain(), "5": {"class_type": "Add", "inputs": {"a": 1, "b": 99}},
              "6": {"class_type": "Show", "inputs": {"value": ["5", 0]}}}
    sink = CollectingSink()
    final = engine.execute(request(tmp_path, prompt), sink)
    assert isinstance(final, Failed) and final.reason == "WORKFLOW_INVALID" and final.node_id == "5"
    assert final.validation.skipped_outputs == ["6"]
    assert calls == {} and not sink.of(Started)


def test_allow_partial_runs_the_valid_branches(engine: Engine, tmp_path: Path) -> None:
    prompt = {**chain(), "5": {"class_type": "Add", "inputs": {"a": 1, "b": 99}},
              "6": {"class_type": "Show", "inputs": {"value": ["5", 0]}}}
    final = engine.execute(request(tmp_path, prompt, allow_partial=True), CollectingSink())
    assert isinstance(final, Succeeded) and set(final.ui) == {"4"}


def test_a_failing_node_is_a_typed_failure(engine: Engine, tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 7}},
              "2": {"class_type": "Boom", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    final = engine.execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(final, Failed)
    assert (final.reason, final.node_id, final.class_type, final.exception_type) == (
        "NODE_EXECUTION_FAILED", "2", "Boom", "ValueError")
    assert "cannot handle 7" in final.message and "ValueError" in final.traceback
    assert [t.node_id for t in final.timings] == ["1"]


def test_a_node_returning_the_wrong_arity_fails_cleanly(engine: Engine, tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "WrongArity", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    final = engine.execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(final, Failed) and final.exception_type == "TypeError" and "declares 2" in final.message


def test_progress_events_come_from_inside_the_node(engine: Engine, tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "Slow", "inputs": {"steps": 3, "value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    sink = CollectingSink()
    engine.execute(request(tmp_path, prompt), sink)
    assert [(e.node_id, e.value, e.max) for e in sink.of(NodeProgress)] == [("1", 1, 3), ("1", 2, 3), ("1", 3, 3)]


class InterruptAfterFirstStep(CollectingSink):
    def __init__(self, flag: threading.Event) -> None:
        super().__init__()
        self.flag = flag

    def emit(self, event: Any) -> None:
        super().emit(event)
        if isinstance(event, NodeProgress):
            self.flag.set()


def test_interrupt_inside_a_long_loop(engine: Engine, tmp_path: Path, calls: dict[str, int]) -> None:
    flag = threading.Event()
    prompt = {"1": {"class_type": "Slow", "inputs": {"steps": 1000, "value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    sink = InterruptAfterFirstStep(flag)
    final = engine.execute(request(tmp_path, prompt), sink, flag)
    assert isinstance(final, Cancelled) and final.node_id == "1"
    assert len(sink.of(NodeProgress)) == 1  # it stopped at the next step
    assert "Show" not in calls


def test_interrupt_between_nodes(engine: Engine, tmp_path: Path, calls: dict[str, int]) -> None:
    flag = threading.Event()

    class StopAfterFirstNode(CollectingSink):
        def emit(self, event: Any) -> None:
            super().emit(event)
            if isinstance(event, NodeStarted) and event.node_id == "2":
                flag.set()

    final = engine.execute(request(tmp_path, chain()), StopAfterFirstNode(), flag)
    assert isinstance(final, Cancelled) and final.node_id == "2"
    assert calls == {"Number": 1}


def test_interrupt_before_start_runs_nothing(engine: Engine, tmp_path: Path, calls: dict[str, int]) -> None:
    flag = threading.Event()
    flag.set()
    final = engine.execute(request(tmp_path, chain()), CollectingSink(), flag)
    assert isinstance(final, Cancelled) and calls == {}


def test_output_files_are_reported(engine: Engine, tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "MakeImage", "inputs": {}}, "2": {"class_type": "TakeImage",
                                                                    "inputs": {"image": ["1", 0]}}}
    final = engine.execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(final, Succeeded)
    assert [(o.node_id, o.filename, o.type, o.kind) for o in final.outputs] == [("2", "x.png", "output", "images")]


def test_deep_chains_do_not_hit_the_recursion_limit(engine: Engine, tmp_path: Path) -> None:
    length = 5000
    prompt: dict[str, Any] = {"0": {"class_type": "Number", "inputs": {"value": 0}}}
    for index in range(1, length):
        prompt[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": [str(length - 1), 0]}}
    final = engine.execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(final, Succeeded) and final.ui["out"]["values"] == [length - 1]
    again = engine.execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(again, Succeeded) and [t.node_id for t in again.timings if not t.cached] == ["out"]


def test_deep_cycles_are_found_without_recursion(engine: Engine) -> None:
    length = 3000
    prompt: dict[str, Any] = {str(i): {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": 1}}
                              for i in range(1, length)}
    prompt["0"] = {"class_type": "Add", "inputs": {"a": [str(length - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": ["5", 0]}}
    _, result = engine.validate(prompt)
    assert not result.valid
    assert [e.type.value for e in result.all_errors()] == ["dependency_cycle"]
