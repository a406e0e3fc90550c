"""Submit → queue → executor → watch → outputs, through Envoy (REST, NDJSON) and gRPC, on the real platform:
PostgreSQL, Redis, SeaweedFS, one CPU executor. Priorities, cancel, idempotency, pagination, deadlines and the
full-queue refusal, all observed from the outside."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from comfymesh.common.v1 import execution_event_pb2 as pb
from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from launcher.platform import Endpoints
from service_runtime.transport.graph_codec import graph_to_proto
from tests.e2e.conftest import QUEUE_MAX_SIZE
from tests.e2e.node_pack import image_graph
from tests.fixtures.auth import authed_channel, bearer_headers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def http(endpoints: Endpoints) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{endpoints.gateway}", timeout=30, trust_env=False,
                      headers=bearer_headers(endpoints.admin_key)) as client:
        yield client


@pytest.fixture
def workflow(endpoints: Endpoints) -> Iterator[workflow_service_pb2_grpc.WorkflowServiceStub]:
    with authed_channel(endpoints.control_plane, endpoints.admin_key) as channel:
        yield workflow_service_pb2_grpc.WorkflowServiceStub(channel)


@pytest.fixture
def queue(endpoints: Endpoints) -> Iterator[queue_service_pb2_grpc.QueueServiceStub]:
    with authed_channel(endpoints.control_plane, endpoints.admin_key) as channel:
        yield queue_service_pb2_grpc.QueueServiceStub(channel)


def _kind(event: dict[str, Any]) -> str:
    return next(k for k in ("queued", "started", "nodes_cached", "node_started", "node_progress", "node_executed",
                            "preview", "retrying", "heartbeat", "succeeded", "failed", "cancelled") if k in event)


def _submit(http: httpx.Client, graph: dict[str, Any], **extra: Any) -> dict[str, Any]:
    response = http.post("/v1/executions", json={"workflow": graph, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _watch(http: httpx.Client, execution_id: str, after: str = "", limit: int | None = None) -> list[dict[str, Any]]:
    """Reads the NDJSON watch stream (until the terminal event, or `limit` events, then drops the connection)."""
    events: list[dict[str, Any]] = []
    params = {"after_event_id": after} if after else {}
    with http.stream("GET", f"/v1/executions/{execution_id}:watch", params=params, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            event = event.get("result", event)  # some transcoders wrap stream items
            events.append(event)
            if _kind(event) in TERMINAL or (limit is not None and len(events) >= limit):
                break
    return events


def _wait_state(http: httpx.Client, execution_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = http.get(f"/v1/executions/{execution_id}").json()
        if body["state"] in states or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def test_rest_submit_watch_and_download(http: httpx.Client) -> None:
    submitted = _submit(http, image_graph(width=40, height=24), labels={"suite": "control-plane"})
    assert submitted["state"] == "EXECUTION_STATE_QUEUED" and len(submitted["id"]) == 32
    events = _watch(http, submitted["id"])
    kinds = [_kind(e) for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded", kinds
    assert "started" in kinds and "node_executed" in kinds
    assert [e["event_id"] for e in events] == sorted(e["event_id"] for e in events)
    assert events[-1]["state"] == "EXECUTION_STATE_SUCCEEDED"

    execution = http.get(f"/v1/executions/{submitted['id']}").json()
    assert execution["state"] == "EXECUTION_STATE_SUCCEEDED" and execution["attempt_count"] == 1
    assert execution["last_event_id"] == events[-1]["event_id"]
    [output] = execution["outputs"]
    assert (output["width"], output["height"], output["content_type"]) == (40, 24, "image/png")
    assert output["url"].startswith("http")
    name = f"{output['subfolder']}/{output['filename']}" if output["subfolder"] else output["filename"]
    download = http.get(f"/v1/executions/{submitted['id']}/outputs/{name}:download")
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert hashlib.sha256(download.content).hexdigest() == output["sha256"]
    with Image.open(io.BytesIO(download.content)) as image:
        assert image.size == (40, 24)
        pixel = image.getpixel((0, 0))
        expected = (0xFF - 0x33, 0xFF - 0x66, 0xFF - 0x99)  # inverted (to within float rounding)
        assert all(abs(a - b) <= 1 for a, b in zip(pixel[:3], expected, strict=True)), pixel  # type: ignore[index]
    presigned = httpx.get(output["url"], timeout=10, trust_env=False)
    assert presigned.status_code == 200 and presigned.content == download.content
    timings = execution["timings"]
    create, start, end = (datetime.fromisoformat(timings[k]) for k in ("create_time", "start_time", "end_time"))
    assert create <= start <= end
    assert {t["node_id"] for t in execution["node_timings"]} == {"1", "2", "3"}


def test_a_dropped_watch_resumes_without_losing_or_repeating_events(http: httpx.Client) -> None:
    submitted = _submit(http, image_graph(seconds=0.6))
    first = _watch(http, submitted["id"], limit=2)  # then the connection drops
    rest = _watch(http, submitted["id"], after=first[-1]["event_id"])
    full = _watch(http, submitted["id"])
    assert [e["event_id"] for e in first + rest] == [e["event_id"] for e in full]
    assert _kind(full[-1]) == "succeeded"
    progress = [e for e in full if _kind(e) == "node_progress"]
    assert progress and progress[-1]["node_progress"]["node_id"] == "4"
    # Several watchers of one finished execution all get the same history and the terminal event.
    assert _watch(http, submitted["id"]) == full


def test_grpc_submit_with_an_exact_graph_and_watch(workflow: workflow_service_pb2_grpc.WorkflowServiceStub) -> None:
    graph = image_graph()
    graph["1"]["inputs"]["color"] = 0x00FF00  # type: ignore[index]
    request = workflow_service_pb2.SubmitExecutionRequest(graph=graph_to_proto(graph), priority=5)
    execution = workflow.SubmitExecution(request, timeout=30)
    events = list(workflow.WatchExecution(workflow_service_pb2.WatchExecutionRequest(id=execution.id), timeout=60))
    assert events[0].WhichOneof("kind") == "queued" and events[-1].WhichOneof("kind") == "succeeded"
    assert events[-1].state == pb.EXECUTION_STATE_SUCCEEDED
    finished = workflow.GetExecution(workflow_service_pb2.GetExecutionRequest(id=execution.id), timeout=10)
    assert finished.graph == execution.graph and finished.priority == 5
    assert finished.outputs[0].object_key.startswith(f"executions/{execution.id}/attempt-1/")


def test_invalid_graphs_are_refused_at_submit_with_field_violations(http: httpx.Client) -> None:
    graph = image_graph()
    graph["1"]["inputs"]["width"] = 0  # type: ignore[index]
    graph["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    response = http.post("/v1/executions", json={"workflow": graph})
    assert response.status_code == 400, response.text
    details = response.json()["details"]
    reasons = {d.get("reason") for d in details}
    assert "WORKFLOW_INVALID" in reasons or "NODE_CLASS_NOT_FOUND" in reasons
    violations = [v for d in details for v in d.get("field_violations", [])]
    assert any("width" in v["field"] for v in violations)


def test_a_deterministic_node_failure_is_not_retried(http: httpx.Client) -> None:
    submitted = _submit(http, image_graph(fail=True))
    events = _watch(http, submitted["id"])
    assert _kind(events[-1]) == "failed" and "retrying" not in [_kind(e) for e in events]
    execution = http.get(f"/v1/executions/{submitted['id']}").json()
    assert execution["state"] == "EXECUTION_STATE_FAILED" and execution["attempt_count"] == 1
    assert execution["error"]["details"][0]["reason"] == "NODE_EXECUTION_FAILED"


def test_request_ids_make_submission_idempotent(http: httpx.Client) -> None:
    request_id = str(uuid.uuid4())
    first = _submit(http, image_graph(), request_id=request_id)
    second = _submit(http, image_graph(), request_id=request_id)
    assert first["id"] == second["id"]
    _watch(http, first["id"])


def test_priorities_and_fifo_with_one_executor_and_a_backlog(
        http: httpx.Client, queue: queue_service_pb2_grpc.QueueServiceStub) -> None:
    queue.PauseQueue(queue_service_pb2.PauseQueueRequest(), timeout=10)
    try:
        submitted = [(priority, _submit(http, image_graph(), priority=priority)["id"])
                     for priority in (0, 0, 50, -10, 50, 10)]
        stats = http.get("/v1/queue/stats").json()
        assert int(stats["queued_total"]) >= 6 and stats["paused"] is True
    finally:
        queue.ResumeQueue(queue_service_pb2.ResumeQueueRequest(), timeout=10)
    finished = [_wait_state(http, eid, {"EXECUTION_STATE_SUCCEEDED"}) for _, eid in submitted]
    # Timestamps as times, not strings: proto JSON writes 0, 3, 6 or 9 fractional digits.
    starts = [datetime.fromisoformat(f["timings"]["start_time"]) for f in finished]
    started = sorted(zip(starts, submitted, strict=True))
    order = [eid for _, (_, eid) in started]
    expected = [eid for _, eid in sorted(submitted, key=lambda item: -item[0])]  # stable: FIFO inside a priority
    assert order == expected, [(priority, start.isoformat()) for start, (priority, _) in started]


def test_cancel_a_queued_and_a_running_execution(http: httpx.Client,
                                                 queue: queue_service_pb2_grpc.QueueServiceStub) -> None:
    queue.PauseQueue(queue_service_pb2.PauseQueueRequest(), timeout=10)
    try:
        queued = _submit(http, image_graph())
        cancelled = http.post(f"/v1/executions/{queued['id']}:cancel", json={"reason": "changed my mind"})
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "EXECUTION_STATE_CANCELLED"
    finally:
        queue.ResumeQueue(queue_service_pb2.ResumeQueueRequest(), timeout=10)
    events = _watch(http, queued["id"])
    assert _kind(events[-1]) == "cancelled" and events[-1]["cancelled"]["reason"] == "changed my mind"

    running = _submit(http, image_graph(seconds=30))
    for event in _watch(http, running["id"], limit=50):
        if _kind(event) == "node_progress":
            break
    response = http.post(f"/v1/executions/{running['id']}:cancel", json={})
    assert response.status_code == 200
    assert _wait_state(http, running["id"], {"EXECUTION_STATE_CANCELLED"}, timeout=20)["state"] == \
        "EXECUTION_STATE_CANCELLED"
    assert _kind(_watch(http, running["id"])[-1]) == "cancelled"
    again = http.post(f"/v1/executions/{running['id']}:cancel", json={})
    assert again.status_code == 400 and again.json()["details"][0]["reason"] == "EXECUTION_FINISHED"


def test_queue_and_run_deadlines(http: httpx.Client, queue: queue_service_pb2_grpc.QueueServiceStub) -> None:
    queue.PauseQueue(queue_service_pb2.PauseQueueRequest(), timeout=10)
    try:
        waiting = _submit(http, image_graph(), queue_timeout="0.5s")
        expired = _wait_state(http, waiting["id"], {"EXECUTION_STATE_FAILED"}, timeout=20)
    finally:
        queue.ResumeQueue(queue_service_pb2.ResumeQueueRequest(), timeout=10)
    assert expired["state"] == "EXECUTION_STATE_FAILED"
    assert expired["error"]["details"][0]["reason"] == "QUEUE_DEADLINE_EXCEEDED"

    slow = _submit(http, image_graph(seconds=30), run_timeout="1s")
    timed_out = _wait_state(http, slow["id"], {"EXECUTION_STATE_FAILED"}, timeout=30)
    assert timed_out["error"]["details"][0]["reason"] == "EXECUTION_TIMEOUT"


def test_a_full_queue_refuses_with_resource_exhausted(http: httpx.Client,
                                                      queue: queue_service_pb2_grpc.QueueServiceStub) -> None:
    queue.PauseQueue(queue_service_pb2.PauseQueueRequest(), timeout=10)
    accepted: list[str] = []
    try:
        while len(accepted) < QUEUE_MAX_SIZE + 2:
            response = http.post("/v1/executions", json={"workflow": image_graph()})
            if response.status_code != 200:
                break
            accepted.append(response.json()["id"])
        assert response.status_code == 429, response.text
        assert response.json()["details"][0]["reason"] == "QUEUE_FULL"
        assert len(accepted) <= QUEUE_MAX_SIZE
    finally:
        queue.ResumeQueue(queue_service_pb2.ResumeQueueRequest(), timeout=10)
    for execution_id in accepted:
        assert _wait_state(http, execution_id, {"EXECUTION_STATE_SUCCEEDED"})["state"] == "EXECUTION_STATE_SUCCEEDED"


def test_list_executions_pages_and_filters(http: httpx.Client) -> None:
    label = uuid.uuid4().hex[:8]
    ids = [_submit(http, image_graph(), labels={"batch": label})["id"] for _ in range(3)]
    for execution_id in ids:
        _wait_state(http, execution_id, {"EXECUTION_STATE_SUCCEEDED"})
    seen: list[str] = []
    token = ""
    while True:
        params = {"page_size": 2, "label_selectors": f"batch={label}"}
        if token:
            params["page_token"] = token
        page = http.get("/v1/executions", params=params).json()
        seen += [e["id"] for e in page["executions"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == sorted(ids, reverse=True)
    succeeded = http.get("/v1/executions", params={"states": "EXECUTION_STATE_SUCCEEDED",
                                                   "label_selectors": f"batch={label}"}).json()
    assert len(succeeded["executions"]) == 3


def test_queue_stats_and_metrics(http: httpx.Client, endpoints: Endpoints) -> None:
    stats = http.get("/v1/queue/stats").json()
    assert int(stats["executors_free"]) + int(stats["executors_busy"]) == 1
    metrics = httpx.get(f"http://{endpoints.control_plane_metrics}/metrics", timeout=5, trust_env=False).text
    for name in ("workflow_queue_time_seconds", "workflow_execution_duration_seconds", "executions_finished_total",
                 "dispatch_latency_seconds", "queue_depth"):
        assert name in metrics, name
    scaling = http.get("/v1/scaling").json()
    assert scaling["current_executors"] == 1 and "reason" in scaling


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _load_graph(name: str) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "loaded"}}}


def test_inputs_uploaded_beforehand_and_sent_inline(http: httpx.Client,
                                                    workflow: workflow_service_pb2_grpc.WorkflowServiceStub) -> None:
    import base64

    uploaded = http.post("/v1/inputs", json={"filename": "cat.png", "content_type": "image/png",
                                             "data": base64.b64encode(_png(20, 10, (10, 20, 30))).decode()})
    assert uploaded.status_code == 200, uploaded.text
    key = uploaded.json()["object_key"]
    submitted = _submit(http, _load_graph("cat.png"),
                        inputs=[{"name": "cat.png", "object_key": key, "content_type": "image/png"}])
    events = _watch(http, submitted["id"])
    assert _kind(events[-1]) == "succeeded", events[-1]
    assert (events[-1]["succeeded"]["outputs"][0]["width"], events[-1]["succeeded"]["outputs"][0]["height"]) == \
        (20, 10)

    inline = workflow_service_pb2.SubmitExecutionRequest(
        graph=graph_to_proto(_load_graph("dog.png")),
        inputs=[pb.InputFile(name="dog.png", data=_png(6, 4, (1, 2, 3)), content_type="image/png")])
    execution = workflow.SubmitExecution(inline, timeout=30)
    assert not execution.inputs[0].data and execution.inputs[0].object_key  # stored, never echoed back
    events_inline = list(workflow.WatchExecution(workflow_service_pb2.WatchExecutionRequest(id=execution.id),
                                                 timeout=60))
    assert events_inline[-1].succeeded.outputs[0].width == 6


def test_an_input_name_the_graph_does_not_supply_and_a_private_url(http: httpx.Client) -> None:
    missing = http.post("/v1/executions", json={"workflow": _load_graph("nowhere.png")})
    assert missing.status_code == 400, missing.text  # LoadImage must name one of the execution's inputs
    private = _submit(http, _load_graph("x.png"), inputs=[{"name": "x.png", "url": "http://127.0.0.1:9/x.png"}])
    execution = _wait_state(http, private["id"], {"EXECUTION_STATE_FAILED"})
    assert execution["state"] == "EXECUTION_STATE_FAILED" and execution["attempt_count"] == 1  # not retried
    assert execution["error"]["details"][0]["reason"] in ("INPUT_INVALID", "URL_NOT_ALLOWED")


def test_models_uploaded_to_the_model_service_are_valid_loader_choices(http: httpx.Client) -> None:
    """The executors published their catalogs before this upload; submit-time validation still accepts it."""
    import base64
    import secrets

    from tests.e2e.test_models import _lora

    data = _lora(4, secrets.token_hex(4))
    name = f"e2e/{secrets.token_hex(4)}.safetensors"
    body = [{"metadata": {"name": name, "kind": "MODEL_KIND_LORA", "size_bytes": str(len(data))}},
            {"chunk": base64.b64encode(data).decode()}]
    uploaded = http.post("/v1/models:upload", json=body)
    assert uploaded.status_code == 200, uploaded.text

    def graph(lora: str) -> dict[str, Any]:
        return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "absent.safetensors"}},
                "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                             "strength_model": 1.0, "strength_clip": 1.0}},
                "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a cat"}},
                "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "5": {"class_type": "KSampler", "inputs": {
                    "model": ["2", 0], "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                    "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                    "denoise": 1.0}},
                "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
                "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "m"}}}

    def errors(lora: str) -> dict[str, list[str]]:
        result = http.post("/v1/workflows:validate", json={"workflow": graph(lora)}).json()["result"]
        return {node: [e["input_name"] for e in item["errors"]] for node, item in result["node_errors"].items()}

    assert errors(name) == {"1": ["ckpt_name"]}
    assert errors("not-uploaded.safetensors") == {"1": ["ckpt_name"], "2": ["lora_name"]}
