"""The ComfyUI backend against a real ComfyUI: the scenarios of tests/integration/test_comfyui_backend.py, with the
executor starting and supervising the ComfyUI checkout that COMFYUI_PATH points at (COMFYUI_PYTHON: its
interpreter, default this one). Skipped without COMFYUI_PATH, in CI too: CI has no ComfyUI.

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/.venv/bin/python .venv/bin/pytest tests/live -q

The graphs are the recorded ones (shared/comfyui-transcripts), so they run on any ComfyUI 0.27 with its bundled
nodes; the sampler scenarios use a tiny random-weight SD1.5 checkpoint the test writes into the executor's models
directory, which ComfyUI only finds through the executor's extra model paths file.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from comfymesh.executor.v1 import executor_service_pb2
from service_runtime.processes import SeaweedFSServer
from tests.fixtures.auth import authed_channel, internal_bearer
from tests.fixtures.comfyui_replay.transcripts import recorded_prompt
from tests.integration.test_comfyui_backend import (
    Executor,
    assert_one_terminal,
    executing,
    kinds,
    reason,
    request_for,
    running_executor,
    stored,
)

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not COMFYUI_PATH, reason="live ComfyUI tests: set COMFYUI_PATH to a ComfyUI checkout (and "
                                                "COMFYUI_PYTHON to its interpreter) to run them"),
]
CHECKPOINT = "tiny_sd15_l1.safetensors"  # the name the recorded sampler graphs use


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFSServer) -> Iterator[Executor]:
    from gpu_executor.diffusion.models.testing import make_tiny_sd1_checkpoint

    home = tmp_path_factory.mktemp("comfyui-live")
    models = home / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / CHECKPOINT).symlink_to(make_tiny_sd1_checkpoint(seed=0))
    checkout = Path(COMFYUI_PATH).expanduser().resolve()
    with running_executor(home, seaweedfs, checkout, os.environ.get("COMFYUI_PYTHON", sys.executable),
                          models_dir=str(models), comfyui_startup_timeout_seconds="300",
                          comfyui_silence_seconds="30", interrupt_grace_seconds="10") as started:
        yield started


def graph(scenario: str, index: int = 0, **prefix: str) -> dict[str, Any]:
    """A recorded graph; SaveImage prefixes made unique so runs never overwrite each other's files."""
    found = recorded_prompt(scenario, index)
    for node in found.values():
        if "filename_prefix" in node.get("inputs", {}):
            node["inputs"]["filename_prefix"] = prefix.get("name", f"live_{scenario}")
    return found


def test_a_run_streams_node_events_and_stores_its_output(executor: Executor, seaweedfs: SeaweedFSServer) -> None:
    events = executor.execute(request_for(graph("image_ok", name="live_ok"), "live-ok"))
    assert_one_terminal(events)
    assert kinds(events)[0] == "started" and kinds(events)[-1] == "succeeded", events[-1]
    assert [e.node_started.node_id for e in events if e.HasField("node_started")] == ["1", "2", "3"]
    (output,) = events[-1].succeeded.outputs
    assert stored(seaweedfs, output)[:4] == b"\x89PNG"


def test_a_repeated_graph_is_served_from_comfyuis_cache(executor: Executor) -> None:
    executor.execute(request_for(graph("image_ok", name="live_cached"), "live-cache-1"))
    events = executor.execute(request_for(graph("image_ok", name="live_cached"), "live-cache-2"))
    assert_one_terminal(events)
    assert "nodes_cached" in kinds(events) and kinds(events)[-1] == "succeeded"


def test_sampler_progress_and_previews(executor: Executor) -> None:
    events = executor.execute(request_for(graph("ksampler_progress"), "live-ks"))
    assert_one_terminal(events)
    assert kinds(events)[-1] == "succeeded", events[-1]
    assert [e.node_progress.value for e in events if e.HasField("node_progress")][-1] == 6
    assert {e.preview.node_id for e in events if e.HasField("preview")} == {"3"}


def test_every_output_kind(executor: Executor, seaweedfs: SeaweedFSServer) -> None:
    events = executor.execute(request_for(graph("multi_output"), "live-multi"))
    assert_one_terminal(events)
    outputs = {o.node_id: o for o in events[-1].succeeded.outputs}
    assert {"3", "4", "6", "7"} <= set(outputs), events[-1]
    assert stored(seaweedfs, outputs["6"]) == b"hello from the recorder"
    assert stored(seaweedfs, outputs["7"])[:4] == b"\x89PNG"


def test_validation_errors_are_typed_per_node(executor: Executor) -> None:
    events = executor.execute(request_for(graph("validation_error"), "live-invalid"))
    assert kinds(events) == ["failed"] and not events[0].failed.retryable
    assert reason(events[0].failed.error) == "WORKFLOW_INVALID"
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in events[0].failed.error.details)
    assert {v.field for v in bad.field_violations} == {'graph.nodes["1"].inputs.width',
                                                        'graph.nodes["4"].inputs.image'}


def test_a_runtime_error_names_the_node(executor: Executor) -> None:
    events = executor.execute(request_for(recorded_prompt("runtime_error"), "live-runtime"))
    assert_one_terminal(events)
    assert reason(events[-1].failed.error) == "NODE_EXECUTION_FAILED" and not events[-1].failed.retryable


def test_interrupt_cancels(executor: Executor) -> None:
    _seen, rest = executing(executor, graph("interrupt"), "live-interrupt", until="node_progress")
    with authed_channel(executor.address, internal_bearer()) as channel:
        assert executor.stub(channel).Interrupt(
            executor_service_pb2.InterruptRequest(execution_id="live-interrupt"), timeout=10).interrupted
    events = rest()
    assert_one_terminal(events)
    assert kinds(events)[-1] == "cancelled"


def test_comfyui_killed_mid_job_is_retryable_and_replaced(executor: Executor) -> None:
    _seen, rest = executing(executor, graph("interrupt"), "live-killed", until="node_progress")
    (victim,) = executor.comfyui_pids()
    os.kill(victim, signal.SIGKILL)
    events = rest()
    assert_one_terminal(events)
    assert events[-1].failed.retryable and reason(events[-1].failed.error) == "EXECUTOR_LOST"
    after = executor.execute(request_for(graph("image_ok", name="live_after"), "live-after-kill"))
    assert kinds(after)[-1] == "succeeded"


def test_the_catalog_is_comfyuis_and_lists_the_executors_models(executor: Executor) -> None:
    with authed_channel(executor.address, internal_bearer()) as channel:
        description = executor.stub(channel).Describe(
            executor_service_pb2.DescribeRequest(include_catalog=True), timeout=60)
    assert description.engine == "comfyui"
    names = {d.name for d in description.catalog}
    assert {"KSampler", "SaveImage", "CheckpointLoaderSimple"} <= names
    with authed_channel(executor.address, internal_bearer()) as channel, pytest.raises(grpc.RpcError) as missing:
        executor.stub(channel).PrefetchModels(executor_service_pb2.PrefetchModelsRequest(
            model_names=["not-there.safetensors"], tier=executor_service_pb2.CACHE_TIER_DISK), timeout=60)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
