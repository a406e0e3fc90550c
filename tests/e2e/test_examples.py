"""The examples/ and clients/node/ deliverables, run for real against the platform (PostgreSQL, Redis, SeaweedFS,
one CPU executor, Envoy): each example graph runs to SUCCEEDED through the gateway and yields a PNG of the size it
asks for; the REST script (bash + curl + jq) and the Node.js client (grpc-js) run as subprocesses, the way a user
runs them; the demo checkpoint script writes into the executor's models dir and uploads through ModelService."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from launcher.platform import Endpoints
from tests.e2e.node_pack import image_graph
from tests.fixtures.auth import bearer_headers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
REST_SCRIPT = EXAMPLES / "rest" / "submit-and-watch.sh"
NODE_EXAMPLE = ROOT / "clients" / "node" / "examples" / "submit-and-watch.js"
DEMO_CHECKPOINT = "comfymesh-demo-sd15.safetensors"
TERMINAL = ("succeeded", "failed", "cancelled")
# The sizes each example's graph asks for (its ImageScale / EmptyLatentImage / input.png).
IMAGE_PROCESSING_SIZE = (128, 96)
TXT2IMG_SIZE = (64, 64)
IMG2IMG_SIZE = (96, 64)
SUBPROCESS_TIMEOUT = 240


@pytest.fixture
def http(endpoints: Endpoints) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{endpoints.gateway}", timeout=60, trust_env=False,
                      headers=bearer_headers(endpoints.admin_key)) as client:
        yield client


@pytest.fixture(scope="module")
def demo_checkpoint(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo checkpoint, built and uploaded through ModelService by examples/make_demo_checkpoint.py --upload.

    Uploaded rather than written into the executor's models dir: an executor lists its models dir when its worker
    starts, and this session's executor started before this module ran. Returns the Model."""
    out = tmp_path_factory.mktemp("demo-checkpoint")
    result = _demo_checkpoint_script(endpoints, "--out", str(out), "--upload")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {out / DEMO_CHECKPOINT}" in result.stdout
    match = re.search(r"uploaded (\S+) as model ([0-9a-f]+) \((\w+)\)", result.stdout)
    assert match and match.groups()[::2] == (DEMO_CHECKPOINT, "MODEL_ARCHITECTURE_SD1"), result.stdout
    with httpx.Client(base_url=f"http://{endpoints.gateway}", timeout=60, trust_env=False,
                      headers=bearer_headers(endpoints.admin_key)) as http:
        model: dict[str, Any] = http.get(f"/v1/models/{match.group(2)}").json()
    assert int(model["size_bytes"]) == (out / DEMO_CHECKPOINT).stat().st_size
    return model


def _demo_checkpoint_script(endpoints: Endpoints, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / "make_demo_checkpoint.py"), *args], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT, env=_client_env(endpoints), cwd=ROOT)


def _client_env(endpoints: Endpoints) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYMESH_")}
    env.update({"COMFYMESH_URL": f"http://{endpoints.gateway}", "COMFYMESH_API_KEY": endpoints.admin_key,
                # googleapis' .proto files for the Node client: the package `make proto` vendors them from.
                "COMFYMESH_GOOGLEAPIS_DIR": sysconfig.get_paths()["purelib"]})
    return env


def _kind(event: dict[str, Any]) -> str:
    return next(k for k in ("queued", "started", "nodes_cached", "node_started", "node_progress", "node_executed",
                            "preview", "retrying", "heartbeat", *TERMINAL) if k in event)


def _run_graph(http: httpx.Client, example: str, inputs: list[dict[str, str]] | None = None) -> Image.Image:
    """Submits an example's file as `workflow_json`, follows the NDJSON watch, and returns the one output PNG."""
    body = {"workflow_json": (EXAMPLES / example / "workflow_api.json").read_text(), "inputs": inputs or []}
    submitted = http.post("/v1/executions", json=body)
    assert submitted.status_code == 200, submitted.text
    execution_id = submitted.json()["id"]
    kinds = []
    with http.stream("GET", f"/v1/executions/{execution_id}:watch", timeout=SUBPROCESS_TIMEOUT) as stream:
        for line in stream.iter_lines():
            if line.strip():
                event = json.loads(line)
                kinds.append(_kind(event.get("result", event)))
                if kinds[-1] in TERMINAL:
                    break
    execution = http.get(f"/v1/executions/{execution_id}").json()
    assert kinds[-1] == "succeeded", execution.get("error")
    [output] = execution["outputs"]
    assert output["content_type"] == "image/png"
    name = f"{output['subfolder']}/{output['filename']}" if output["subfolder"] else output["filename"]
    download = http.get(f"/v1/executions/{execution_id}/outputs/{name}:download")
    assert download.status_code == 200
    image = Image.open(io.BytesIO(download.content))
    assert image.format == "PNG" and image.size == (output["width"], output["height"])
    return image


def test_the_image_processing_example_needs_no_model(http: httpx.Client) -> None:
    image = _run_graph(http, "image-processing")
    assert image.size == IMAGE_PROCESSING_SIZE
    # The canvas is 0x336699; inverted it is (0xCC, 0x99, 0x66), which blurring and scaling a flat image keep.
    pixel = image.convert("RGB").getpixel((64, 48))
    assert all(abs(a - b) <= 2 for a, b in zip(pixel, (0xCC, 0x99, 0x66), strict=True)), pixel  # type: ignore[arg-type]


def test_the_txt2img_example_runs_on_the_demo_checkpoint(http: httpx.Client, demo_checkpoint: dict[str, Any]) -> None:
    assert _run_graph(http, "txt2img").size == TXT2IMG_SIZE


def _rest_script(endpoints: Endpoints, *args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("curl") and shutil.which("jq"), "the REST script needs curl and jq"
    return subprocess.run(["bash", str(REST_SCRIPT), *args], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=_client_env(endpoints), cwd=ROOT)


def test_the_rest_script_submits_watches_and_downloads(endpoints: Endpoints, tmp_path: Path) -> None:
    result = _rest_script(endpoints, "-o", str(tmp_path), "-p", "5",
                          str(EXAMPLES / "image-processing" / "workflow_api.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.match(r"submitted [0-9a-f]{32} \(queue position \d+\)", lines[0]), lines
    assert any("queued (priority 5" in line for line in lines), lines
    assert any(re.search(r"node 5 SaveImage done", line) for line in lines), lines
    assert "state: EXECUTION_STATE_SUCCEEDED" in lines
    [png] = list(tmp_path.rglob("*.png"))
    assert f"downloaded {png}" in lines
    with Image.open(png) as image:
        assert image.size == IMAGE_PROCESSING_SIZE


def test_the_img2img_example_through_the_rest_script_with_its_input_file(
        endpoints: Endpoints, tmp_path: Path, demo_checkpoint: dict[str, Any]) -> None:
    result = _rest_script(endpoints, "-o", str(tmp_path), "-i", f"input.png={EXAMPLES / 'img2img' / 'input.png'}",
                          str(EXAMPLES / "img2img" / "workflow_api.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(re.search(r"node 3 \d+/\d+", line) for line in result.stdout.splitlines()), result.stdout  # steps
    [png] = list(tmp_path.rglob("*.png"))
    with Image.open(png) as image:
        assert image.size == IMG2IMG_SIZE


def test_the_rest_script_exits_1_on_a_failed_execution_and_2_on_a_refused_one(endpoints: Endpoints,
                                                                               tmp_path: Path) -> None:
    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps(image_graph(fail=True)))
    result = _rest_script(endpoints, "-o", str(tmp_path / "out"), str(failing))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "state: EXECUTION_STATE_FAILED" in result.stdout and "(NODE_EXECUTION_FAILED)" in result.stdout
    assert not (tmp_path / "out").exists()

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    refused = _rest_script(endpoints, str(invalid))
    assert refused.returncode == 2 and "submit refused: HTTP 400" in refused.stderr, refused.stderr


def _node_example(endpoints: Endpoints, *args: str, api_key: str = "") -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "Node.js is required (the project's tooling uses it)"
    return subprocess.run([node, str(NODE_EXAMPLE), "--url", endpoints.gateway, "--api-key",
                           api_key or endpoints.admin_key, *args], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=_client_env(endpoints), cwd=ROOT)


def test_the_node_client_submits_and_watches_to_succeeded(endpoints: Endpoints, http: httpx.Client) -> None:
    result = _node_example(endpoints, "--priority", "7", str(EXAMPLES / "image-processing" / "workflow_api.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    submitted = re.match(r"submitted ([0-9a-f]{32}) \(queue position \d+\)", lines[0])
    assert submitted, lines
    execution_id = submitted.group(1)
    assert lines[1].startswith("  queued (priority 7, position "), lines
    assert "  node 5 SaveImage done" in lines and "  succeeded: 1 output(s)" in lines
    assert "state: EXECUTION_STATE_SUCCEEDED" in lines
    [key] = [line.removeprefix("output: ") for line in lines if line.startswith("output: ")]
    # What it printed is what the platform stored.
    execution = http.get(f"/v1/executions/{execution_id}").json()
    assert execution["priority"] == 7 and [o["object_key"] for o in execution["outputs"]] == [key]
    assert key.startswith(f"executions/{execution_id}/") and key.endswith(".png")


# The library itself, from a script: a full watch, then one resumed after the second event.
WATCH_RESUME_SCRIPT = """
import { readFileSync } from 'node:fs';
import { ComfyMeshClient } from '%(client)s';
const client = new ComfyMeshClient({ address: process.argv[1], apiKey: process.argv[2] });
const execution = await client.submit(readFileSync(process.argv[3], 'utf8'), { labels: { example: 'node' } });
const full = [];
const terminal = await client.watch(execution.id, (event) => full.push([event.event_id, event.kind]));
const resumed = [];
await client.watch(execution.id, (event) => resumed.push([event.event_id, event.kind]),
  { afterEventId: full[1][0] });
const got = await client.get(execution.id);
console.log(JSON.stringify({ full, resumed, terminal: terminal.kind, state: got.state, labels: got.labels }));
client.close();
"""


def test_the_node_client_resumes_a_watch_after_an_event(endpoints: Endpoints) -> None:
    node = shutil.which("node")
    assert node
    script = WATCH_RESUME_SCRIPT % {"client": (ROOT / "clients" / "node" / "src" / "client.js").as_uri()}
    result = subprocess.run([node, "--input-type=module", "-e", script, endpoints.gateway, endpoints.admin_key,
                             str(EXAMPLES / "image-processing" / "workflow_api.json")], capture_output=True,
                            text=True, timeout=SUBPROCESS_TIMEOUT, env=_client_env(endpoints), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["terminal"] == "succeeded" and report["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert report["labels"] == {"example": "node"}
    full = [tuple(event) for event in report["full"]]
    assert full[0][1] == "queued" and full[-1][1] == "succeeded"
    assert [tuple(event) for event in report["resumed"]] == full[2:]  # nothing lost, nothing repeated


def test_the_node_client_sends_an_input_file(endpoints: Endpoints, tmp_path: Path) -> None:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "node-input"}}}
    workflow = tmp_path / "load.json"
    workflow.write_text(json.dumps(graph))
    result = _node_example(endpoints, "--input", f"in.png={EXAMPLES / 'img2img' / 'input.png'}", str(workflow))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "state: EXECUTION_STATE_SUCCEEDED" in result.stdout.splitlines()


def test_the_node_client_exits_1_when_the_graph_fails_or_is_refused(endpoints: Endpoints, tmp_path: Path) -> None:
    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps(image_graph(fail=True)))
    result = _node_example(endpoints, str(failing))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "state: EXECUTION_STATE_FAILED" in result.stdout.splitlines()
    assert any(line.startswith("  failed: ") for line in result.stdout.splitlines()), result.stdout

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    refused = _node_example(endpoints, str(invalid))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    # The typed error: gRPC code and the platform's ErrorInfo reason, decoded from grpc-status-details-bin.
    assert re.search(r"error: INVALID_ARGUMENT \((WORKFLOW_INVALID|NODE_CLASS_NOT_FOUND)\)", refused.stderr), \
        refused.stderr

    wrong_key = _node_example(endpoints, str(failing), api_key="cm_not-a-key")
    assert wrong_key.returncode == 1 and "error: UNAUTHENTICATED" in wrong_key.stderr, wrong_key.stderr


def test_the_demo_checkpoint_lands_in_the_models_dir_and_is_not_uploaded_twice(
        endpoints: Endpoints, demo_checkpoint: dict[str, Any], tmp_path: Path) -> None:
    models = tmp_path / "home" / "models"
    env = {**_client_env(endpoints), "COMFYMESH_HOME": str(tmp_path / "home")}
    written = subprocess.run([sys.executable, str(EXAMPLES / "make_demo_checkpoint.py")], capture_output=True,
                             text=True, timeout=SUBPROCESS_TIMEOUT, env=env, cwd=ROOT)
    assert written.returncode == 0, written.stderr
    assert (models / "checkpoints" / DEMO_CHECKPOINT).stat().st_size == int(demo_checkpoint["size_bytes"])

    again = _demo_checkpoint_script(endpoints, "--out", str(tmp_path / "again.safetensors"), "--upload")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"as model {demo_checkpoint['model_id']} " in again.stdout  # the same bytes: the stored model

    refused = _demo_checkpoint_script(endpoints, "--out", str(tmp_path), "--upload", "--api-key", "cm_not-a-key")
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr, refused.stderr
