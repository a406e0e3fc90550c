"""A fleet that mixes engines, through the whole platform: one built-in executor and one running ComfyUI (the replay
server of the recorded ComfyUI 0.27 sessions, started and supervised by the executor as it would start ComfyUI).

- The node catalog served to users is the union: ComfyUI-only classes appear in GET /v1/nodes.
- A graph only ComfyUI can run is validated against ComfyUI's own /object_info and placed on the ComfyUI executor.
- A graph needing a class of each engine is refused at submit (no single executor can run it), not queued forever.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.platform import LocalPlatform, fleet_size
from service_runtime.processes import SeaweedFSServer, free_port
from service_runtime.settings import Settings
from tests.e2e.conftest import write_node_pack
from tests.e2e.node_pack import image_graph
from tests.fixtures.auth import bearer_headers
from tests.fixtures.comfyui_replay.checkout import ReplayOptions, make_fake_checkout
from tests.fixtures.comfyui_replay.transcripts import recorded_prompt
from tests.fixtures.infra import PostgresDatabases

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
COMFYUI_EXECUTOR = "executor-2"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases,
          seaweedfs: SeaweedFSServer) -> Iterator[LocalPlatform]:
    home: Path = tmp_path_factory.mktemp("mixed")
    pack = write_node_pack(home)  # built-in only classes (SlowPassthrough, ...)
    settings = Settings(home=home, database_url=postgres_databases.create(), redis_url="",
                        s3_endpoint=seaweedfs.endpoint, s3_access_key=seaweedfs.access_key,
                        s3_secret_key=seaweedfs.secret_key, environment="test", log_format="json")
    platform = LocalPlatform(settings, free_ports=True, executors=1, extra_env={
        "CUSTOM_NODES_DIRS": str(pack), "SHUTDOWN_GRACE_SECONDS": "2"})
    platform.start()
    try:
        checkout = make_fake_checkout(home / "comfyui-checkout", ReplayOptions(time_scale=0.05))
        platform.start_executor(2, free_port(), free_port(), {
            "COMFYMESH_EXECUTOR_ENGINE": "comfyui", "COMFYMESH_COMFYUI_PATH": str(checkout),
            "COMFYMESH_COMFYUI_PYTHON": sys.executable, "COMFYMESH_COMFYUI_EXTRA_ARGS": "--cpu",
            "COMFYMESH_HOME": str(home / "comfyui-executor")})
        deadline = time.monotonic() + 120
        while fleet_size(platform.endpoints.control_plane, settings) < 2:
            assert time.monotonic() < deadline, platform.processes[COMFYUI_EXECUTOR].log_tail()
            time.sleep(0.3)
        yield platform
    finally:
        platform.stop()


@pytest.fixture
def http(fleet: LocalPlatform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{fleet.endpoints.gateway}", timeout=30, trust_env=False,
                      headers=bearer_headers(fleet.endpoints.admin_key)) as client:
        yield client


def _finished(http: httpx.Client, execution_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = http.get(f"/v1/executions/{execution_id}").json()
        if body["state"] in ("EXECUTION_STATE_SUCCEEDED", "EXECUTION_STATE_FAILED", "EXECUTION_STATE_CANCELLED"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_the_fleet_reports_both_engines(http: httpx.Client) -> None:
    executors = http.get("/v1/executors").json()["executors"]
    engines = {e["executor_id"]: e["description"]["engine"] for e in executors}
    assert engines == {"executor-1": "builtin", COMFYUI_EXECUTOR: "comfyui"}, executors
    names = set()
    token = ""
    while True:
        page = http.get("/v1/nodes", params={"page_token": token}).json()
        names |= {n["name"] for n in page["nodes"]}
        token = page.get("next_page_token", "")
        if not token:
            break
    assert {"PreviewAny", "SaveImageWebsocket", "SlowPassthrough", "KSampler"} <= names


def test_a_comfyui_only_graph_runs_on_the_comfyui_executor(http: httpx.Client) -> None:
    response = http.post("/v1/executions", json={"workflow": recorded_prompt("multi_output")})
    assert response.status_code == 200, response.text
    body = _finished(http, response.json()["id"])
    assert body["state"] == "EXECUTION_STATE_SUCCEEDED", body
    assert body["executor_id"] == COMFYUI_EXECUTOR
    kinds = {(o["node_id"], o["content_type"]) for o in body["outputs"]}
    assert {("3", "image/png"), ("6", "text/plain")} <= kinds, body["outputs"]


def test_a_built_in_only_graph_runs_on_the_built_in_executor(http: httpx.Client) -> None:
    response = http.post("/v1/executions", json={"workflow": image_graph(seconds=0.1)})
    assert response.status_code == 200, response.text
    body = _finished(http, response.json()["id"])
    assert (body["state"], body["executor_id"]) == ("EXECUTION_STATE_SUCCEEDED", "executor-1"), body


def test_a_graph_no_single_executor_can_run_is_refused_at_submit(http: httpx.Client) -> None:
    graph = image_graph(seconds=0.1)
    graph["90"] = {"class_type": "PrimitiveString", "inputs": {"value": "only ComfyUI has me"}}
    graph["91"] = {"class_type": "PreviewAny", "inputs": {"source": ["90", 0]}}
    response = http.post("/v1/executions", json={"workflow": graph})
    assert response.status_code == 400, response.text
    detail = response.json()["details"][0]
    assert detail["reason"] == "NO_CAPABLE_EXECUTOR" and "PreviewAny" in detail["metadata"]["class_types"]
    assert detail["metadata"]["engines"] == "builtin,comfyui"
