"""At-least-once under failure, on a platform of its own (its own Valkey, two executors, 3-second leases):
an executor killed mid-run → the execution is retried on the other one and succeeds; the control plane killed and
restarted mid-run → the execution still ends in a terminal state, reported once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.platform import LocalPlatform
from service_runtime.processes import SeaweedFSServer, free_port
from service_runtime.settings import Settings
from tests.e2e.conftest import write_node_pack
from tests.e2e.node_pack import image_graph
from tests.fixtures.auth import bearer_headers
from tests.fixtures.infra import PostgresDatabases

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases,
          seaweedfs: SeaweedFSServer) -> Iterator[LocalPlatform]:
    home: Path = tmp_path_factory.mktemp("chaos")
    pack = write_node_pack(home)
    settings = Settings(home=home, database_url=postgres_databases.create(), redis_url="",
                        s3_endpoint=seaweedfs.endpoint, s3_access_key=seaweedfs.access_key,
                        s3_secret_key=seaweedfs.secret_key, environment="test", log_format="json")
    platform = LocalPlatform(settings, free_ports=True, executors=2, extra_env={
        "CUSTOM_NODES_DIRS": str(pack), "QUEUE_LEASE_SECONDS": "3", "QUEUE_JANITOR_INTERVAL_SECONDS": "0.5",
        "EXECUTOR_HEARTBEAT_SECONDS": "1", "INTERRUPT_GRACE_SECONDS": "2", "SHUTDOWN_GRACE_SECONDS": "2"})
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture
def http(fleet: LocalPlatform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{fleet.endpoints.gateway}", timeout=30, trust_env=False,
                      headers=bearer_headers(fleet.endpoints.admin_key)) as client:
        yield client


def _get(http: httpx.Client, execution_id: str) -> dict[str, Any]:
    for _ in range(50):
        try:
            response = http.get(f"/v1/executions/{execution_id}")
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        time.sleep(0.2)  # the control plane is restarting: Envoy answers 503 meanwhile
    raise AssertionError(f"execution {execution_id} unreadable")


def _wait(http: httpx.Client, execution_id: str, predicate: Any, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = _get(http, execution_id)
        if predicate(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _submit(http: httpx.Client, seconds: float) -> str:
    response = http.post("/v1/executions", json={"workflow": image_graph(seconds=seconds)})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_an_executor_killed_mid_run_is_replaced_by_another(fleet: LocalPlatform, http: httpx.Client) -> None:
    execution_id = _submit(http, seconds=4)
    running = _wait(http, execution_id, lambda b: b["state"] == "EXECUTION_STATE_RUNNING")
    victim = running["executor_id"]
    assert victim in fleet.processes, running
    fleet.processes[victim].send_signal(signal.SIGKILL)
    finished = _wait(http, execution_id, lambda b: b["state"] in (
        "EXECUTION_STATE_SUCCEEDED", "EXECUTION_STATE_FAILED"))
    assert finished["state"] == "EXECUTION_STATE_SUCCEEDED", finished
    assert finished["attempt_count"] == 2 and finished["executor_id"] != victim
    assert finished["outputs"][0]["object_key"].startswith(f"executions/{execution_id}/attempt-2/")
    index = int(victim.rsplit("-", 1)[1])
    port = int(fleet.endpoints.executors[index - 1].rsplit(":", 1)[1])
    fleet.start_executor(index, port, free_port())  # back to two for the next test


def test_the_control_plane_killed_mid_run_still_ends_the_execution_once(fleet: LocalPlatform,
                                                                        http: httpx.Client) -> None:
    execution_id = _submit(http, seconds=3)
    _wait(http, execution_id, lambda b: b["state"] == "EXECUTION_STATE_RUNNING")
    fleet.processes["control_plane"].send_signal(signal.SIGKILL)
    fleet.processes["control_plane"].wait(10)
    fleet.restart_control_plane()
    finished = _wait(http, execution_id, lambda b: b["state"] in (
        "EXECUTION_STATE_SUCCEEDED", "EXECUTION_STATE_FAILED", "EXECUTION_STATE_CANCELLED"))
    assert finished["state"] == "EXECUTION_STATE_SUCCEEDED", finished
    events = []
    with http.stream("GET", f"/v1/executions/{execution_id}:watch", timeout=60) as response:
        for line in response.iter_lines():
            if line.strip():
                events.append(line)
                if '"succeeded"' in line or '"failed"' in line or '"cancelled"' in line:
                    break
    terminal = [e for e in events if '"succeeded"' in e or '"failed"' in e or '"cancelled"' in e]
    assert len(terminal) == 1 and '"succeeded"' in terminal[0]


def test_two_dispatcher_replicas_never_run_a_job_twice(fleet: LocalPlatform, http: httpx.Client) -> None:
    """A second control plane (another dispatcher, queue janitor, outcome consumer) shares Redis and PostgreSQL."""
    import os
    import sys

    from service_runtime.healthcheck import check
    from service_runtime.processes import ManagedProcess

    port = free_port()
    env = {**fleet.child_env(), "COMFYMESH_CONTROL_PLANE_PORT": str(port),
           "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_SERVICE_INSTANCE": "replica-2"}
    replica = ManagedProcess([sys.executable, "-m", "services.control_plane"], name="control_plane-2", env=env,
                             log_path=fleet.home / "logs" / "control_plane-2.log", cwd=Path(os.getcwd())).start()
    try:
        replica.wait_ready(lambda: check(f"127.0.0.1:{port}", timeout=1.0), 60)
        ids = [_submit(http, seconds=0.2) for _ in range(12)]
        finished = [_wait(http, i, lambda b: b["state"].endswith(("SUCCEEDED", "FAILED", "CANCELLED"))) for i in ids]
        assert {f["state"] for f in finished} == {"EXECUTION_STATE_SUCCEEDED"}
        assert {f["attempt_count"] for f in finished} == {1}
        for execution_id in ids:
            with http.stream("GET", f"/v1/executions/{execution_id}:watch", timeout=60) as response:
                lines = [line for line in response.iter_lines() if line.strip()]
            assert sum('"started"' in line for line in lines) == 1
    finally:
        replica.stop(grace=10)
