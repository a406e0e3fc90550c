"""Through Envoy, over REST and gRPC: discovery, health, exact graphs, typed errors, and bad input never a 5xx."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from launcher.platform import Endpoints, LocalPlatform
from service_runtime.db import Database
from service_runtime.ids import time_ordered_id
from service_runtime.processes import grpcurl_binary
from service_runtime.transport.graph_codec import graph_from_proto
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.repository import ExecutionRepository
from services.registry import PUBLIC_SERVICES
from tests.fixtures.auth import authed_channel, bearer_headers

pytestmark = pytest.mark.e2e
MAX_SEED = 2**64 - 1
GRAPH = {
    "3": {"class_type": "KSampler", "_meta": {"title": "Sampler"},
          "inputs": {"seed": MAX_SEED, "steps": 20, "cfg": 7.5, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
}


def _http(endpoints: Endpoints) -> httpx.Client:
    return httpx.Client(base_url=f"http://{endpoints.gateway}", timeout=10, trust_env=False,
                        headers=bearer_headers(endpoints.admin_key))


def test_grpcurl_lists_every_service_through_the_gateway(endpoints: Endpoints) -> None:
    out = subprocess.run([str(grpcurl_binary()), "-plaintext", endpoints.gateway, "list"], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert set(PUBLIC_SERVICES) <= set(out)
    assert "comfymesh.executor.v1.GpuExecutorService" not in out


def test_healthz(endpoints: Endpoints) -> None:
    with _http(endpoints) as http:
        assert http.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def stored_execution(platform: LocalPlatform) -> ExecutionRecord:
    """An execution written the way the control plane writes them (submission itself is a later issue)."""
    now = datetime.now(UTC)
    record = ExecutionRecord(id=time_ordered_id(), tenant="default", state=ExecutionState.SUCCEEDED, graph=GRAPH,
                             create_time=now, update_time=now, labels={"suite": "e2e"})

    async def insert() -> None:
        db = Database(platform.settings.resolved_database_url)
        try:
            await ExecutionRepository(db).add(record)
        finally:
            await db.dispose()

    asyncio.run(insert())
    return record


def test_graph_round_trips_exactly_over_grpc_through_envoy(endpoints: Endpoints,
                                                           stored_execution: ExecutionRecord) -> None:
    with authed_channel(endpoints.gateway, endpoints.admin_key) as channel:
        execution = workflow_service_pb2_grpc.WorkflowServiceStub(channel).GetExecution(
            workflow_service_pb2.GetExecutionRequest(id=stored_execution.id), timeout=10)
    assert graph_from_proto(execution.graph) == GRAPH
    assert execution.graph.nodes["3"].inputs["seed"].literal.uint_value == MAX_SEED


def test_rest_callers_get_64_bit_integers_as_exact_strings(endpoints: Endpoints,
                                                           stored_execution: ExecutionRecord) -> None:
    with _http(endpoints) as http:
        response = http.get(f"/v1/executions/{stored_execution.id}")
        listed = http.get("/v1/executions", params={"label_selectors": "suite=e2e"})
    assert response.status_code == 200
    body = response.json()
    assert body["graph"]["nodes"]["3"]["inputs"]["seed"]["literal"] == {"uint_value": str(MAX_SEED)}
    assert body["graph"]["nodes"]["3"]["inputs"]["model"]["link"] == {"node_id": "4", "output_index": 0}
    assert body["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert [e["id"] for e in listed.json()["executions"]] == [stored_execution.id]


def test_typed_errors_through_the_gateway_over_grpc(endpoints: Endpoints) -> None:
    with authed_channel(endpoints.gateway, endpoints.admin_key) as channel, pytest.raises(grpc.RpcError) as caught:
        workflow_service_pb2_grpc.WorkflowServiceStub(channel).GetExecution(
            workflow_service_pb2.GetExecutionRequest(id="0" * 32), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    assert info.reason == "EXECUTION_NOT_FOUND"


def test_typed_errors_through_the_gateway_over_rest(endpoints: Endpoints) -> None:
    with _http(endpoints) as http:
        response = http.get(f"/v1/executions/{'0' * 32}")
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 5
    assert body["details"][0]["reason"] == "EXECUTION_NOT_FOUND"


BAD_REQUESTS = [
    ("POST", "/v1/executions", {"content": b"{not json"}, 400),
    ("POST", "/v1/executions", {"json": {"priority": "high"}}, 400),
    ("POST", "/v1/executions", {"json": {"workflow": "not an object"}}, 400),
    ("POST", "/v1/workflows:validate", {"content": b"[1,2,3]"}, 400),
    ("GET", "/v1/executions", {"params": {"bogus": "1"}}, 400),
    ("GET", "/v1/executions", {"params": {"page_size": "-5"}}, 400),
    ("GET", "/v1/executions", {"params": {"page_size": "many"}}, 400),
    ("GET", "/v1/executions", {"params": {"page_token": "forged"}}, 400),
    ("GET", "/v1/executions", {"params": {"states": "NOT_A_STATE"}}, 400),
    ("GET", "/v1/executions", {"params": {"label_selectors": "no-equals-sign"}}, 400),
    ("GET", "/v1/executions/not-an-id", {}, 400),
    ("GET", "/v2/nothing", {}, 404),
    ("DELETE", "/v1/executions/abc", {}, 404),
    ("GET", "/", {}, 404),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "expected"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_with_a_json_error(endpoints: Endpoints, method: str, path: str,
                                                kwargs: dict[str, object], expected: int) -> None:
    with _http(endpoints) as http:
        response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == expected, response.text
    body = json.loads(response.text)
    assert isinstance(body["code"], int) and body["code"] != 0 and body["message"]


def test_metrics_are_exported(endpoints: Endpoints) -> None:
    metrics = httpx.get(f"http://{endpoints.control_plane_metrics}/metrics", timeout=5, trust_env=False).text
    assert 'grpc_service="comfymesh.workflow.v1.WorkflowService"' in metrics
    assert "api_errors_total" in metrics


def test_node_catalog_through_the_gateway(endpoints: Endpoints) -> None:
    """GET /v1/nodes (typed) and GET /v1/object_info (ComfyUI's exact JSON) come from the executor's engine."""
    with _http(endpoints) as http:
        nodes = http.get("/v1/nodes").json()["nodes"]
        page = http.get("/v1/nodes", params={"page_size": 2}).json()
        second = http.get("/v1/nodes", params={"page_size": 2, "page_token": page["next_page_token"]}).json()
        images = http.get("/v1/nodes", params={"category": "image"}).json()["nodes"]
        object_info = http.get("/v1/object_info")
    by_name = {n["name"]: n for n in nodes}
    assert {"SaveImage", "LoadImage", "EmptyImage", "ImageInvert", "EmptyLatentImage"} <= set(by_name)
    save = by_name["SaveImage"]
    assert save["output_node"] is True and save["display_name"] == "Save Image"
    assert [i["name"] for i in save["inputs"]][:2] == ["images", "filename_prefix"]
    assert len(page["nodes"]) == 2 and page["next_page_token"]
    assert second["nodes"][0]["name"] > page["nodes"][1]["name"]
    assert images and all(n["category"].startswith("image") for n in images)
    assert object_info.status_code == 200 and object_info.headers["content-type"] == "application/json"
    info = object_info.json()
    assert info["SaveImage"]["input"]["required"]["filename_prefix"][0] == "STRING"
    assert info["SaveImage"]["output_node"] is True
