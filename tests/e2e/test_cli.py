"""`comfymesh` as a real subprocess against the platform: run with overrides and live progress (plain lines, since
stdout is a pipe), exit codes for success, failure, bad input, API errors, cancellation and timeouts, and the
executions, queue, nodes, keys and models commands with `--json`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from launcher.platform import Endpoints
from services.model.testing import write_safetensors
from tests.e2e.node_pack import image_graph

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "image-processing" / "workflow_api.json"
COMFYMESH = Path(sys.executable).parent / "comfymesh"  # the console script of this virtual environment


def comfymesh(endpoints: Endpoints, *args: str, api_key: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYMESH_")}
    return subprocess.run([str(COMFYMESH), "--url", endpoints.gateway, "--api-key",
                           api_key if api_key is not None else endpoints.admin_key, *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False)


def _graph_file(tmp_path: Path, *, seconds: float = 0.0, fail: bool = False) -> Path:
    graph: dict[str, dict[str, object]] = image_graph(seconds=seconds, fail=fail)  # type: ignore[assignment]
    graph["1"]["_meta"] = {"title": "Canvas"}
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(graph))
    return path


def test_run_the_example_with_overrides_saves_and_prints_the_outputs(endpoints: Endpoints, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = comfymesh(endpoints, "run", str(EXAMPLE), "--set", "Resize.width=64", "--set", "4.height=48",
                       "--set", "Save.filename_prefix=cli", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert len(paths) == 1 and paths[0].is_file() and paths[0].is_relative_to(out)
    with Image.open(paths[0]) as image:
        assert image.size == (64, 48)
    progress = result.stderr.splitlines()
    assert progress[0].startswith("execution ")
    assert any(line.startswith("queued: position ") for line in progress), progress
    assert "node 4 (ImageScale) started" in progress
    assert any(line.startswith("node 5 (SaveImage) done in ") for line in progress), progress
    assert progress[-1] == "succeeded: 1 output(s)"


def test_run_shows_step_progress_and_a_failing_graph_exits_1(endpoints: Endpoints, tmp_path: Path) -> None:
    slow = comfymesh(endpoints, "run", str(_graph_file(tmp_path, seconds=0.5)), "-o", str(tmp_path / "o"))
    assert slow.returncode == 0, slow.stderr
    steps = [line for line in slow.stderr.splitlines() if line.startswith("node 4 (SlowPassthrough) step ")]
    assert steps and steps[-1].endswith("(100%)") and 2 <= len(steps) <= 12, steps

    failing = comfymesh(endpoints, "run", str(_graph_file(tmp_path, fail=True)), "-o", str(tmp_path / "o2"))
    assert failing.returncode == 1 and failing.stdout == ""
    assert failing.stderr.splitlines()[-1].startswith("error: NODE_EXECUTION_FAILED: ")


def test_bad_input_exits_2_with_one_line(endpoints: Endpoints, tmp_path: Path) -> None:
    unknown = comfymesh(endpoints, "run", str(EXAMPLE), "--set", "Blurr.sigma=2")
    assert unknown.returncode == 2 and unknown.stdout == ""
    [line] = unknown.stderr.splitlines()
    assert line.startswith("error: INVALID_ARGUMENT: no node 'Blurr'") and "3 ('Blur')" in line

    invalid = comfymesh(endpoints, "run", str(EXAMPLE), "--set", "Canvas.width=0")
    assert invalid.returncode == 2
    [line] = invalid.stderr.splitlines()
    assert line.startswith("error: WORKFLOW_INVALID: ") and "width" in line

    missing = comfymesh(endpoints, "run", str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: INVALID_ARGUMENT: cannot read")


def test_api_errors_exit_3(endpoints: Endpoints) -> None:
    unauthenticated = comfymesh(endpoints, "queue", "stats", api_key="cm_not_a_real_key")
    assert unauthenticated.returncode == 3 and unauthenticated.stderr.startswith("error: UNAUTHENTICATED: ")
    missing = comfymesh(endpoints, "executions", "get", "0" * 32)
    assert missing.returncode == 3 and missing.stderr.startswith("error: EXECUTION_NOT_FOUND: ")


def test_timeout_then_executions_list_get_cancel_and_watch(endpoints: Endpoints, tmp_path: Path) -> None:
    timed_out = comfymesh(endpoints, "run", str(_graph_file(tmp_path, seconds=30)), "--timeout", "2")
    assert timed_out.returncode == 5, timed_out.stderr
    assert timed_out.stderr.splitlines()[-1].startswith("error: DEADLINE_EXCEEDED: ")
    execution_id = timed_out.stderr.splitlines()[0].removeprefix("execution ")

    listed = comfymesh(endpoints, "executions", "list", "--json", "--limit", "50")
    assert listed.returncode == 0, listed.stderr
    assert execution_id in [e["id"] for e in json.loads(listed.stdout)]
    table = comfymesh(endpoints, "executions", "list", "--state", "running", "--state", "queued")
    assert table.stdout.splitlines()[0].split("\t") == ["ID", "STATE", "PRIORITY", "CREATED", "OUTPUTS"]
    assert execution_id in table.stdout
    got = comfymesh(endpoints, "executions", "get", execution_id, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["state"] in ("EXECUTION_STATE_RUNNING",
                                                                      "EXECUTION_STATE_QUEUED")

    cancelled = comfymesh(endpoints, "executions", "cancel", execution_id, "--reason", "cli test")
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"{execution_id} cancelled"), cancelled.stderr
    watched = comfymesh(endpoints, "executions", "watch", execution_id)
    assert watched.returncode == 4 and watched.stderr.splitlines()[-1] == "cancelled: cli test"
    ndjson = comfymesh(endpoints, "executions", "watch", execution_id, "--json")
    events = [json.loads(line) for line in ndjson.stdout.splitlines()]
    assert ndjson.returncode == 4 and "queued" in events[0] and events[-1]["cancelled"]["reason"] == "cli test"


def test_queue_stats_and_nodes(endpoints: Endpoints) -> None:
    stats = comfymesh(endpoints, "queue", "stats")
    assert stats.returncode == 0 and stats.stdout.startswith("queued:"), stats.stderr
    as_json = json.loads(comfymesh(endpoints, "queue", "stats", "--json").stdout)
    assert int(as_json["max_queue_size"]) > 0
    nodes = comfymesh(endpoints, "nodes")
    names = [line.split("\t")[0] for line in nodes.stdout.splitlines()[1:]]
    assert nodes.returncode == 0 and {"EmptyImage", "ImageInvert", "SaveImage", "SlowPassthrough"} <= set(names)
    image_nodes = json.loads(comfymesh(endpoints, "nodes", "--category", "image", "--json").stdout)
    assert image_nodes and all(node["category"].startswith("image") for node in image_nodes)


def test_keys_create_list_and_revoke(endpoints: Endpoints) -> None:
    name = f"cli-{secrets.token_hex(3)}"
    created = comfymesh(endpoints, "keys", "create", "--name", name, "--json")
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    key_id, secret = body["api_key"]["key_id"], body["secret"]
    assert comfymesh(endpoints, "queue", "stats", api_key=secret).returncode == 0  # the new key works
    listed = json.loads(comfymesh(endpoints, "keys", "list", "--json").stdout)
    assert any(k["key_id"] == key_id and k["display_name"] == name for k in listed)
    revoked = comfymesh(endpoints, "keys", "revoke", key_id)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked {key_id}")
    assert "revoke_time" in next(k for k in json.loads(comfymesh(endpoints, "keys", "list", "--json").stdout)
                                 if k["key_id"] == key_id)


def test_models_upload_list_and_rm(endpoints: Endpoints, tmp_path: Path) -> None:
    layout = {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
              "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (768, 4)}
    path = write_safetensors(tmp_path / f"cli-{secrets.token_hex(4)}.safetensors", layout, fill="random")
    uploaded = comfymesh(endpoints, "models", "upload", str(path), "--kind", "lora")
    assert uploaded.returncode == 0, uploaded.stderr
    model_id, name = uploaded.stdout.split()[:2]
    assert name == path.name and uploaded.stderr.splitlines()[-1].endswith("(100%)")
    listed = json.loads(comfymesh(endpoints, "models", "list", "--name", path.name, "--json").stdout)
    assert [(m["model_id"], m["kind"]) for m in listed] == [(model_id, "MODEL_KIND_LORA")]
    table = comfymesh(endpoints, "models", "list", "--kind", "lora")
    assert model_id in table.stdout
    removed = comfymesh(endpoints, "models", "rm", model_id)
    assert (removed.returncode, removed.stdout.strip()) == (0, f"deleted {model_id}")
    assert json.loads(comfymesh(endpoints, "models", "list", "--name", path.name, "--json").stdout) == []
    again = comfymesh(endpoints, "models", "rm", model_id)
    assert again.returncode == 3 and again.stderr.startswith("error: MODEL_NOT_FOUND: ")
    bad_kind = comfymesh(endpoints, "models", "upload", str(path), "--kind", "pickles")
    assert bad_kind.returncode == 2 and "unknown model kind 'pickles'" in bad_kind.stderr


def test_ctrl_c_exits_130_and_leaves_the_execution_running(endpoints: Endpoints, tmp_path: Path) -> None:
    env = dict(os.environ)
    process = subprocess.Popen([str(COMFYMESH), "--url", endpoints.gateway, "--api-key", endpoints.admin_key, "run",
                                str(_graph_file(tmp_path, seconds=30))], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if " step " in line:
            break  # running now
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=30)
    assert process.returncode == 130, rest
    execution_id = lines[0].removeprefix("execution ")
    assert f"comfymesh executions cancel {execution_id}" in rest
    still = json.loads(comfymesh(endpoints, "executions", "get", execution_id, "--json").stdout)
    assert still["state"] == "EXECUTION_STATE_RUNNING"
    assert comfymesh(endpoints, "executions", "cancel", execution_id).returncode == 0


def test_help_documents_the_exit_codes(endpoints: Endpoints) -> None:
    result = comfymesh(endpoints, "--help")
    assert result.returncode == 0
    for line in ("0  success", "1  the execution failed", "2  usage error", "3  API or connection error",
                 "4  the execution was cancelled", "5  timed out", "130  interrupted by Ctrl-C"):
        assert line in result.stdout
