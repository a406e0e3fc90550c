"""Validation: every error kind with its exact type, node and input, in ComfyUI's vocabulary."""

from __future__ import annotations

from typing import Any

import pytest

from gpu_executor.engine.engine import Engine
from gpu_executor.engine.errors import NodeErrorType as T

pytestmark = pytest.mark.unit


def _errors(engine: Engine, prompt: Any) -> list[tuple[str, str, str]]:
    _, result = engine.validate(prompt)
    return sorted((e.type.value, e.node_id, e.input_name) for e in result.all_errors())


def show(value: Any) -> dict[str, Any]:
    return {"class_type": "Show", "inputs": {"value": value}}


@pytest.mark.parametrize(("prompt", "expected"), [
    ({"1": {"class_type": "Nope", "inputs": {}}, "2": show(1)}, [(T.MISSING_NODE_TYPE, "1", "")]),
    ({"1": {"class_type": "Add", "inputs": {"b": 1}}, "2": show(["1", 0])}, [(T.REQUIRED_INPUT_MISSING, "1", "a")]),
    ({"1": {"class_type": "Scale", "inputs": {"x": 1, "mode": "double", "factor": 1.0}},
      "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}}, "3": show(["2", 0])},
     [(T.RETURN_TYPE_MISMATCH, "2", "a")]),
    ({"1": {"class_type": "Add", "inputs": {"a": "many", "b": 1}}, "2": show(["1", 0])},
     [(T.INVALID_INPUT_TYPE, "1", "a")]),
    ({"1": {"class_type": "TakeImage", "inputs": {"image": [[0.5]]}}}, [(T.INVALID_INPUT_TYPE, "1", "image")]),
    ({"1": {"class_type": "Add", "inputs": {"a": 1, "b": -1}}, "2": show(["1", 0])},
     [(T.VALUE_SMALLER_THAN_MIN, "1", "b")]),
    ({"1": {"class_type": "Add", "inputs": {"a": 1, "b": 11}}, "2": show(["1", 0])},
     [(T.VALUE_BIGGER_THAN_MAX, "1", "b")]),
    ({"1": {"class_type": "Scale", "inputs": {"x": 1, "mode": "triple", "factor": 1.0}}, "2": show(["1", 0])},
     [(T.VALUE_NOT_IN_LIST, "1", "mode")]),
    ({"1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
      "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}}, "3": show(["1", 0])},
     [(T.DEPENDENCY_CYCLE, "1", "")]),
    ({"1": {"class_type": "Add", "inputs": {"a": 1, "b": 1}}}, [(T.PROMPT_NO_OUTPUTS, "", "")]),
    ({"1": {"class_type": "Even", "inputs": {"value": 3}}, "2": show(["1", 0])},
     [(T.CUSTOM_VALIDATION_FAILED, "1", "")]),
    ({"1": {"class_type": "Even", "inputs": {"value": 13}}, "2": show(["1", 0])},
     [(T.CUSTOM_VALIDATION_FAILED, "1", "")]),
    ({"2": show(["9", 0])}, [(T.LINK_TO_MISSING_NODE, "2", "value")]),
    ({"1": {"class_type": "Number", "inputs": {"value": 1}}, "2": show(["1", 3])},
     [(T.OUTPUT_INDEX_OUT_OF_RANGE, "2", "value")]),
    ([1, 2], [(T.MALFORMED, "", "")]),
    ("not a graph", [(T.MALFORMED, "", "")]),
    ({"1": "node"}, [(T.MALFORMED, "1", "")]),
    ({"1": {"inputs": {}}}, [(T.MALFORMED, "1", "")]),
    ({"1": {"class_type": "Show", "inputs": [1]}}, [(T.MALFORMED, "1", "")]),
    ({"1": {"class_type": "Add", "inputs": {"a": {"x": 1}, "b": 1}}, "2": show(["1", 0])},
     [(T.INVALID_INPUT_TYPE, "1", "a")]),
    ({"1": {"class_type": "Scale", "inputs": {"x": 1, "mode": "double", "factor": float("inf")}}, "2": show(["1", 0])},
     [(T.INVALID_INPUT_TYPE, "1", "factor")]),
])
def test_each_error_kind(engine: Engine, prompt: Any, expected: list[tuple[str, str, str]]) -> None:
    assert _errors(engine, prompt) == sorted((t.value, n, i) for t, n, i in expected)


def test_messages_and_details_follow_comfyui(engine: Engine) -> None:
    _, result = engine.validate({"1": {"class_type": "Add", "inputs": {"a": 1, "b": -1}}, "2": show(["1", 0])})
    error = result.node_errors["1"].errors[0]
    assert (error.message, error.details) == ("Value -1 smaller than min of 0", "b")
    assert result.node_errors["1"].class_type == "Add"
    assert result.node_errors["1"].dependent_outputs == ["2"]


def test_literals_are_converted_like_comfyui(engine: Engine) -> None:
    graph, result = engine.validate({"1": {"class_type": "Add", "inputs": {"a": "5", "b": 2.9}}, "2": show(["1", 0])})
    assert result.valid
    assert graph.nodes["1"].inputs == {"a": 5, "b": 2}


def test_validate_inputs_replaces_builtin_checks(engine: Engine) -> None:
    """Even declares max 10 but validates `value` itself: 12 is accepted because it is even."""
    _, result = engine.validate({"1": {"class_type": "Even", "inputs": {"value": 12}}, "2": show(["1", 0])})
    assert result.valid


def test_only_what_outputs_need_is_validated(engine: Engine) -> None:
    _, result = engine.validate({"1": {"class_type": "Add", "inputs": {"a": "bad", "b": 99}},
                                 "2": {"class_type": "Number", "inputs": {"value": 1}}, "3": show(["2", 0])})
    assert result.valid and result.runnable_outputs == ["3"]


def test_one_valid_and_one_invalid_branch(engine: Engine) -> None:
    _, result = engine.validate({"1": {"class_type": "Number", "inputs": {"value": 1}}, "2": show(["1", 0]),
                                 "3": {"class_type": "Add", "inputs": {"a": 1, "b": 50}}, "4": show(["3", 0])})
    assert not result.valid
    assert (result.runnable_outputs, result.skipped_outputs) == (["2"], ["4"])
    assert result.node_errors["3"].dependent_outputs == ["4"]


def test_exact_64_bit_integers_pass(engine: Engine) -> None:
    graph, result = engine.validate({"1": {"class_type": "Number", "inputs": {"value": 2**64 - 1}},
                                     "2": show(["1", 0])})
    assert result.valid and graph.nodes["1"].inputs["value"] == 2**64 - 1
