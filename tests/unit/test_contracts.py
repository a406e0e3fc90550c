"""Contract rules that buf lint cannot check: HTTP rules, terminal events, naming, and the descriptor set."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from comfymesh.common.v1 import execution_event_pb2
from comfymesh.executor.v1 import executor_service_pb2
from services.registry import PUBLIC_SERVICES

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "gen" / "descriptor" / "comfymesh.binpb"


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())


def _services() -> list[tuple[str, descriptor_pb2.ServiceDescriptorProto]]:
    found = []
    for file in _descriptor_set().file:
        if file.package.startswith("comfymesh."):
            found += [(f"{file.package}.{s.name}", s) for s in file.service]
    return found


def test_public_services_are_every_service_but_the_executor() -> None:
    names = {name for name, _ in _services()}
    executor = executor_service_pb2.DESCRIPTOR.services_by_name["GpuExecutorService"].full_name
    assert names - {executor} == set(PUBLIC_SERVICES)


@pytest.mark.parametrize("service", [name for name, _ in _services()])
def test_every_rpc_has_an_http_rule(service: str) -> None:
    methods = dict(_services())[service].method
    assert methods
    for method in methods:
        rule = method.options.Extensions[annotations_pb2.http]
        assert rule.WhichOneof("pattern"), f"{service}/{method.name} has no google.api.http rule"


def test_core_rest_surface() -> None:
    rules = {}
    for name, service in _services():
        for method in service.method:
            rule = method.options.Extensions[annotations_pb2.http]
            kind = rule.WhichOneof("pattern")
            rules[(kind, getattr(rule, kind))] = f"{name}/{method.name}"
    workflow = "comfymesh.workflow.v1.WorkflowService"
    assert rules[("post", "/v1/executions")] == f"{workflow}/SubmitExecution"
    assert rules[("get", "/v1/executions/{id}")] == f"{workflow}/GetExecution"
    assert rules[("get", "/v1/executions")] == f"{workflow}/ListExecutions"
    assert rules[("post", "/v1/executions/{id}:cancel")] == f"{workflow}/CancelExecution"
    assert rules[("get", "/v1/executions/{id}:watch")] == f"{workflow}/WatchExecution"
    assert rules[("post", "/v1/workflows:validate")] == f"{workflow}/ValidateWorkflow"
    assert rules[("get", "/v1/nodes")] == f"{workflow}/ListNodes"


def test_watch_streams_end_with_exactly_one_kind_of_terminal_event() -> None:
    kinds = {f.name for f in execution_event_pb2.ExecutionEvent.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert {"succeeded", "failed", "cancelled"} <= kinds
    assert {"queued", "started", "nodes_cached", "node_started", "node_progress", "node_executed", "preview"} <= kinds
    failed = execution_event_pb2.ExecutionFailed.DESCRIPTOR.fields_by_name["error"]
    assert failed.message_type.full_name == "google.rpc.Status"


def test_descriptor_set_carries_what_envoy_needs() -> None:
    files = {f.name for f in _descriptor_set().file}
    assert {"google/api/annotations.proto", "google/api/http.proto", "google/api/httpbody.proto",
            "google/rpc/status.proto", "google/rpc/error_details.proto"} <= files


def test_graph_values_cannot_lose_integer_precision() -> None:
    from comfymesh.common.v1 import value_pb2

    fields = {f.name: f.type for f in value_pb2.Value.DESCRIPTOR.fields}
    assert fields["int_value"] == descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    assert fields["uint_value"] == descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
