"""Workflow files and `--set` overrides: by node id or `_meta.title`, JSON-or-string values, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfymesh.client import InvalidArgumentError, Override, Workflow, WorkflowError

pytestmark = pytest.mark.unit

GRAPH = {
    "3": {"class_type": "KSampler", "_meta": {"title": "Sampler"},
          "inputs": {"seed": 5, "steps": 20, "cfg": 7.0, "model": ["4", 0], "positive": ["6", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive Prompt"}, "inputs": {"text": "a dog",
                                                                                           "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "Prompt"}, "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "CLIPTextEncode", "_meta": {"title": "Prompt"}, "inputs": {"text": "", "clip": ["4", 1]}},
}


@pytest.fixture
def workflow(tmp_path: Path) -> Workflow:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(GRAPH))
    return Workflow.load(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("42", 42), ("-1.5", -1.5), ("true", True), ("null", None), ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}),
    ('"42"', "42"), ("a cat", "a cat"), ("", ""), ("NaN", "NaN"), ("18446744073709551615", 2**64 - 1),
])
def test_values_are_json_when_they_parse_else_strings(text: str, expected: object) -> None:
    assert Override.parse(f"3.seed={text}").value == expected


def test_override_by_id_and_by_title(workflow: Workflow) -> None:
    updated = workflow.with_overrides(["3.seed=42", "Positive Prompt.text=a cat", "Sampler.cfg=4.5"])
    graph = updated.graph
    assert graph["3"]["inputs"]["seed"] == 42 and graph["3"]["inputs"]["cfg"] == 4.5
    assert graph["6"]["inputs"]["text"] == "a cat"
    assert graph["3"]["inputs"]["model"] == ["4", 0]  # links untouched
    assert workflow.graph["3"]["inputs"]["seed"] == 5  # the original is unchanged


def test_the_value_may_contain_equals_signs_and_the_title_dots(tmp_path: Path) -> None:
    graph = {"1": {"class_type": "Note", "_meta": {"title": "v1.2 prompt"}, "inputs": {"text": ""}}}
    updated = Workflow(graph).with_overrides(["v1.2 prompt.text=a=b"])
    assert updated.graph["1"]["inputs"]["text"] == "a=b"


def test_a_later_override_wins_and_big_seeds_stay_exact(workflow: Workflow) -> None:
    updated = workflow.with_overrides(["3.seed=1", "3.seed=18446744073709551615"])
    assert json.loads(updated.to_json())["3"]["inputs"]["seed"] == 2**64 - 1


def test_an_unknown_node_lists_the_nodes_and_titles(workflow: Workflow) -> None:
    with pytest.raises(WorkflowError) as caught:
        workflow.with_overrides(["Negative Prompt.text=x"])
    message = str(caught.value)
    assert "no node 'Negative Prompt'" in message
    assert "3 ('Sampler')" in message and "6 ('Positive Prompt')" in message and "4" in message
    assert isinstance(caught.value, InvalidArgumentError) and caught.value.reason == "INVALID_ARGUMENT"


def test_an_unknown_input_lists_the_inputs(workflow: Workflow) -> None:
    with pytest.raises(WorkflowError, match=r"node 3 \(KSampler\) has no input 'sed'; inputs: cfg, model, positive, "
                                            r"seed, steps"):
        workflow.with_overrides(["3.sed=1"])


def test_an_ambiguous_title_and_a_link_are_refused(workflow: Workflow) -> None:
    with pytest.raises(WorkflowError, match="ambiguous: nodes 7, 8"):
        workflow.with_overrides(["Prompt.text=x"])
    with pytest.raises(WorkflowError, match="is a link to node 4 output 0"):
        workflow.with_overrides(["3.model=1"])


@pytest.mark.parametrize("text", ["seed=1", "3.seed", ".seed=1", "3.=1", "=1"])
def test_malformed_overrides(text: str) -> None:
    with pytest.raises(WorkflowError, match=r"NODE\.INPUT=VALUE"):
        Override.parse(text)


@pytest.mark.parametrize(("content", "match"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object of nodes"),
    ("{}", "has no nodes"),
    ('{"1": {"inputs": {}}}', "not an object with a class_type"),
    ('{"1": {"class_type": "X", "inputs": []}}', "inputs of node '1' are not an object"),
    ('{"nodes": [], "links": []}', "UI format"),
    ('{"1": {"class_type": "X", "inputs": {"v": NaN}}}', "not valid JSON"),
])
def test_malformed_files_are_typed_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(WorkflowError, match=match) as caught:
        Workflow.load(path)
    assert caught.value.reason == "WORKFLOW_MALFORMED"


def test_a_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="cannot read"):
        Workflow.load(tmp_path / "absent.json")
