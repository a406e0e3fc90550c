"""Workflow graphs survive every encoding exactly, and malformed graphs are typed errors, never exceptions."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format, struct_pb2

from comfymesh.common.v1 import graph_pb2
from comfymesh.workflow.v1 import workflow_service_pb2
from service_runtime.errors import Reason, ServiceError
from service_runtime.transport.graph_codec import (
    graph_from_proto,
    graph_from_request,
    graph_from_struct,
    graph_to_json,
    graph_to_proto,
    parse_workflow_json,
)

pytestmark = pytest.mark.unit

MAX_SEED = 2**64 - 1
WORKFLOW_TEXT = json.dumps({
    "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"},
          "inputs": {"seed": MAX_SEED, "steps": 20, "cfg": 7.5, "denoise": 1.0, "sampler_name": "euler",
                     "model": ["4", 0], "positive": ["6", 0], "flag": True, "none": None, "neg": -(2**63),
                     "big_signed": 2**63 - 1, "nested": {"list": [1, 2.5, "x", [0.1]]}}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat (wearing a hat:1.2) 🐱", "clip": ["4", 1]}},
})


def test_json_text_to_proto_bytes_and_back_is_exact() -> None:
    graph = parse_workflow_json(WORKFLOW_TEXT)
    wire = graph_to_proto(graph).SerializeToString()  # what crosses gRPC
    back = graph_from_proto(graph_pb2.WorkflowGraph.FromString(wire))
    assert back == graph
    assert back["3"]["inputs"]["seed"] == MAX_SEED
    assert json.loads(graph_to_json(back)) == json.loads(WORKFLOW_TEXT)
    assert isinstance(back["3"]["inputs"]["cfg"], float) and isinstance(back["3"]["inputs"]["steps"], int)
    assert back["3"]["inputs"]["denoise"] == 1.0 and isinstance(back["3"]["inputs"]["denoise"], float)


def test_typed_graph_through_proto3_json_is_exact() -> None:
    """What a REST caller sees of a stored graph: 64-bit integers as decimal strings, nothing rounded."""
    message = graph_to_proto(parse_workflow_json(WORKFLOW_TEXT))
    as_json = json_format.MessageToJson(message)
    assert '"18446744073709551615"' in as_json
    back = json_format.Parse(as_json, graph_pb2.WorkflowGraph())
    assert graph_from_proto(back) == parse_workflow_json(WORKFLOW_TEXT)


def test_links_and_literal_lists_are_told_apart() -> None:
    message = graph_to_proto(parse_workflow_json(WORKFLOW_TEXT))
    assert message.nodes["3"].inputs["model"].WhichOneof("kind") == "link"
    assert message.nodes["3"].inputs["model"].link.output_index == 0
    assert message.nodes["3"].inputs["nested"].WhichOneof("kind") == "literal"
    assert message.nodes["3"].meta.fields["title"].string_value == "KSampler"


def test_struct_paste_keeps_small_integers_and_rejects_inexact_ones() -> None:
    struct = struct_pb2.Struct()
    struct.update({"1": {"class_type": "EmptyImage", "inputs": {"width": 512, "color": 0.5}}})
    graph = graph_from_struct(struct)
    assert graph["1"]["inputs"] == {"width": 512, "color": 0.5} and isinstance(graph["1"]["inputs"]["width"], int)

    struct.update({"2": {"class_type": "KSampler", "inputs": {"seed": float(2**53)}}})
    with pytest.raises(ServiceError) as caught:
        graph_from_struct(struct)
    assert caught.value.reason == Reason.INEXACT_INTEGER
    assert [v.field for v in caught.value.field_violations] == ["workflow.2.inputs.seed"]


@pytest.mark.parametrize(("text", "field"), [
    ("[1, 2]", "workflow_json"),
    ("{}", "workflow_json"),
    ('{"1": 5}', "workflow_json.1"),
    ('{"1": {"inputs": {}}}', "workflow_json.1.class_type"),
    ('{"1": {"class_type": "", "inputs": {}}}', "workflow_json.1.class_type"),
    ('{"1": {"class_type": "X", "inputs": [1]}}', "workflow_json.1.inputs"),
    ('{"1": {"class_type": "X", "inputs": {"a": NaN}}}', "workflow_json"),
    ('{"1": {"class_type": "X", "inputs": {"a": 1}', "workflow_json"),
])
def test_malformed_graphs_are_typed_errors(text: str, field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_workflow_json(text)
    assert caught.value.reason == Reason.WORKFLOW_MALFORMED
    assert caught.value.field_violations[0].field == field


def test_json_errors_report_the_position() -> None:
    with pytest.raises(ServiceError) as caught:
        parse_workflow_json('{"1": {"class_type": "X",,}}')
    assert "line 1 column 26" in caught.value.message


def test_integers_beyond_64_bits_are_rejected() -> None:
    with pytest.raises(ServiceError) as caught:
        graph_to_proto(parse_workflow_json('{"1": {"class_type": "X", "inputs": {"a": 18446744073709551616}}}'))
    assert caught.value.field_violations[0].field == "graph.1.inputs.a"


def test_request_without_a_workflow_is_invalid_argument() -> None:
    with pytest.raises(ServiceError) as caught:
        graph_from_request(workflow_service_pb2.SubmitExecutionRequest())
    assert caught.value.field_violations[0].field == "workflow"


def test_each_request_encoding_gives_the_same_graph() -> None:
    small = '{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "color": 255}}}'
    by_text = graph_from_request(workflow_service_pb2.SubmitExecutionRequest(workflow_json=small))
    by_struct = graph_from_request(json_format.Parse(
        json.dumps({"workflow": json.loads(small)}), workflow_service_pb2.SubmitExecutionRequest()))
    by_graph = graph_from_request(workflow_service_pb2.SubmitExecutionRequest(graph=graph_to_proto(by_text)))
    assert by_text == by_struct == by_graph
