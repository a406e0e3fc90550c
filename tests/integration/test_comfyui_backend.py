"""The executor with COMFYMESH_EXECUTOR_ENGINE=comfyui, end to end: a real executor process serving gRPC, real
SeaweedFS for outputs, and the ComfyUI replay server (tests/fixtures/comfyui_replay: a fake ComfyUI checkout that
plays back what ComfyUI 0.27 really sent) started and supervised by the executor as it would start ComfyUI.

Covered: event translation (nodes, progress, previews), a fully cached run, every output kind, validation and
runtime errors, interrupt and deadline, a node that ignores the interrupt, a dropped and a silent websocket
(reconciled from /history), ComfyUI SIGKILLed mid-job, frames of foreign prompts, and the catalog.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from comfymesh.common.v1 import execution_event_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from gpu_executor.comfyui.backend import prompt_id_for
from service_runtime.healthcheck import check
from service_runtime.processes import ManagedProcess, SeaweedFSServer, free_port
from service_runtime.transport.graph_codec import graph_to_proto
from tests.fixtures.auth import authed_channel, internal_bearer, secret_env
from tests.fixtures.comfyui_replay.checkout import ReplayOptions, make_fake_checkout, python_executable
from tests.fixtures.comfyui_replay.transcripts import recorded_prompt

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
OUTPUTS_BUCKET = "comfymesh-outputs"


class Executor:
    """An executor process whose engine is a fake ComfyUI checkout."""

    def __init__(self, address: str, checkout: Path, process: ManagedProcess) -> None:
        self.address = address
        self.checkout = checkout
        self.process = process

    def stub(self, channel: grpc.Channel) -> executor_service_pb2_grpc.GpuExecutorServiceStub:
        return executor_service_pb2_grpc.GpuExecutorServiceStub(channel)

    def execute(self, request: executor_service_pb2.ExecuteRequest) -> list[pb.ExecutionEvent]:
        with authed_channel(self.address, internal_bearer()) as channel:
            return list(self.stub(channel).Execute(request, timeout=60))

    def comfyui_pids(self) -> list[int]:
        """The ComfyUI (replay server) processes running from this executor's checkout."""
        marker = str(self.checkout / "main.py").encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker in (entry / "cmdline").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
        return pids


@contextlib.contextmanager
def running_executor(home: Path, seaweedfs: SeaweedFSServer, checkout: Path, python: str,
                     **settings: str) -> Iterator[Executor]:
    """An executor process (COMFYMESH_EXECUTOR_ENGINE=comfyui) supervising ComfyUI from `checkout`; on exit, the
    executor is stopped and must have stopped its ComfyUI too. `settings` override COMFYMESH_* variables."""
    port = free_port()
    env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_EXECUTOR_PORT": str(port),
           "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_S3_ENDPOINT": seaweedfs.endpoint,
           "COMFYMESH_S3_ACCESS_KEY": seaweedfs.access_key, "COMFYMESH_S3_SECRET_KEY": seaweedfs.secret_key,
           "COMFYMESH_EXECUTOR_REGISTER": "false", "COMFYMESH_EXECUTOR_ENGINE": "comfyui",
           "COMFYMESH_COMFYUI_PATH": str(checkout), "COMFYMESH_COMFYUI_PYTHON": python,
           "COMFYMESH_COMFYUI_EXTRA_ARGS": "--cpu", "COMFYMESH_INTERRUPT_GRACE_SECONDS": "2",
           "COMFYMESH_COMFYUI_SILENCE_SECONDS": "1", "COMFYMESH_COMFYUI_STARTUP_TIMEOUT_SECONDS": "60",
           **{f"COMFYMESH_{k.upper()}": v for k, v in settings.items()}, **secret_env()}
    process = ManagedProcess([sys.executable, "-m", "gpu_executor", "serve"], log_path=home / "executor.log",
                             env=env, cwd=ROOT, name="executor").start()
    try:
        process.wait_ready(lambda: check(f"127.0.0.1:{port}", timeout=1.0), 120)
        executor = Executor(f"127.0.0.1:{port}", checkout, process)
        with authed_channel(executor.address, internal_bearer()) as channel:  # wait for ComfyUI and the catalog
            executor.stub(channel).Describe(executor_service_pb2.DescribeRequest(include_catalog=True), timeout=60)
        yield executor
    finally:
        assert process.stop(grace=20) == 0, process.log_tail()
    assert not executor.comfyui_pids(), "the executor left ComfyUI running"


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFSServer) -> Iterator[Executor]:
    home = tmp_path_factory.mktemp("comfyui-executor")
    checkout = make_fake_checkout(home / "checkout", ReplayOptions(time_scale=0.05))
    with running_executor(home, seaweedfs, checkout, python_executable()) as started:
        yield started


@pytest.fixture
def misbehaving(tmp_path: Path, seaweedfs: SeaweedFSServer) -> Callable[..., contextlib.AbstractContextManager[
        Executor]]:
    def start(**options: Any) -> contextlib.AbstractContextManager[Executor]:
        checkout = make_fake_checkout(tmp_path / "checkout", ReplayOptions(time_scale=0.05, **options))
        return running_executor(tmp_path, seaweedfs, checkout, python_executable())

    return start


def request(scenario: str, execution_id: str, attempt: int = 1) -> executor_service_pb2.ExecuteRequest:
    return request_for(recorded_prompt(scenario), execution_id, attempt)


def request_for(graph: dict[str, Any], execution_id: str, attempt: int = 1) -> executor_service_pb2.ExecuteRequest:
    return executor_service_pb2.ExecuteRequest(
        execution_id=execution_id, attempt=attempt, graph=graph_to_proto(graph),
        output_prefix=f"executions/{execution_id}/attempt-{attempt}")


def kinds(events: list[pb.ExecutionEvent]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


def reason(status: Any) -> str:
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    return str(info.reason)


def assert_one_terminal(events: list[pb.ExecutionEvent]) -> None:
    found = kinds(events)
    assert sum(found.count(k) for k in ("succeeded", "failed", "cancelled")) == 1, found
    assert found[-1] in ("succeeded", "failed", "cancelled"), found
    assert [int(e.event_id) for e in events] == list(range(1, len(events) + 1))


def stored(seaweedfs: SeaweedFSServer, output: pb.OutputFile) -> bytes:
    data: bytes = seaweedfs.client().get_object(OUTPUTS_BUCKET, output.object_key).read()
    assert hashlib.sha256(data).hexdigest() == output.sha256 and len(data) == output.size_bytes
    return data


def executing(executor: Executor, scenario: str | dict[str, Any], execution_id: str, until: str,
              **fields: Any) -> tuple[list[pb.ExecutionEvent], Callable[[], list[pb.ExecutionEvent]]]:
    """Starts an Execute in the background; returns the events up to the first of kind `until` and a function
    that returns all of them once the stream ends."""
    first = request(scenario, execution_id) if isinstance(scenario, str) else request_for(scenario, execution_id)
    seen: list[pb.ExecutionEvent] = []
    failures: list[grpc.RpcError] = []
    reached = threading.Event()
    done = threading.Event()

    def follow() -> None:
        try:
            with authed_channel(executor.address, internal_bearer()) as channel:
                for event in executor.stub(channel).Execute(
                        executor_service_pb2.ExecuteRequest(**{**_fields(first), **fields}), timeout=120):
                    seen.append(event)
                    if event.WhichOneof("kind") == until:
                        reached.set()
        except grpc.RpcError as error:
            failures.append(error)
        finally:
            reached.set()
            done.set()

    threading.Thread(target=follow, daemon=True).start()
    assert reached.wait(30), f"no {until} event"

    def rest() -> list[pb.ExecutionEvent]:
        assert done.wait(60), "the stream did not end"
        assert not failures, failures[0]
        return seen

    return list(seen), rest


def _fields(message: executor_service_pb2.ExecuteRequest) -> dict[str, Any]:
    return {field.name: value for field, value in message.ListFields()}


# -- the happy paths -------------------------------------------------------------------------------------


def test_a_run_is_translated_into_node_events_and_its_output_stored(executor: Executor,
                                                                     seaweedfs: SeaweedFSServer) -> None:
    events = executor.execute(request("image_ok", "ok-1"))
    assert_one_terminal(events)
    assert kinds(events)[0] == "started" and kinds(events)[-1] == "succeeded"
    assert [e.node_started.node_id for e in events if e.HasField("node_started")] == ["1", "2", "3"]
    (executed,) = [e.node_executed for e in events if e.HasField("node_executed")]
    assert executed.node_id == "3" and executed.class_type == "SaveImage"
    (output,) = events[-1].succeeded.outputs
    assert (output.node_id, output.type, output.content_type) == ("3", "output", "image/png")
    assert output.object_key == f"executions/ok-1/attempt-1/output/{output.filename}"
    assert stored(seaweedfs, output)[:4] == b"\x89PNG" and (output.width, output.height) > (0, 0)
    assert [t.node_id for t in events[-1].succeeded.node_timings] == ["1", "2", "3"]


def test_a_fully_cached_run_reports_cached_nodes(executor: Executor, seaweedfs: SeaweedFSServer) -> None:
    executor.execute(request("image_ok", "cache-warm"))
    events = executor.execute(request("image_ok", "cache-hit"))
    assert_one_terminal(events)
    assert kinds(events) == ["started", "nodes_cached", "node_executed", "succeeded"]
    assert list(events[1].nodes_cached.node_ids) == ["1", "2", "3"]
    (output,) = events[-1].succeeded.outputs
    assert stored(seaweedfs, output)[:4] == b"\x89PNG"
    assert all(t.cached for t in events[-1].succeeded.node_timings)


def test_sampler_progress_and_previews_stream(executor: Executor) -> None:
    events = executor.execute(request("ksampler_progress", "ks-1"))
    assert_one_terminal(events)
    assert [(e.node_progress.node_id, e.node_progress.value, e.node_progress.max) for e in events
            if e.HasField("node_progress")] == [("3", step, 6) for step in range(1, 7)]
    previews = [e.preview for e in events if e.HasField("preview")]
    assert len(previews) == 6 and {(p.node_id, p.content_type) for p in previews} == {("3", "image/jpeg")}
    assert kinds(events)[-1] == "succeeded"


def test_every_output_kind_is_stored(executor: Executor, seaweedfs: SeaweedFSServer) -> None:
    events = executor.execute(request("multi_output", "multi-1"))
    assert_one_terminal(events)
    outputs = {o.node_id: o for o in events[-1].succeeded.outputs}
    assert set(outputs) == {"3", "4", "6", "7"}
    assert (outputs["3"].type, outputs["4"].type) == ("output", "temp")  # SaveImage; PreviewImage's temp file
    assert stored(seaweedfs, outputs["6"]) == b"hello from the recorder"  # PreviewAny's text
    assert outputs["6"].content_type == "text/plain"
    websocket_png = stored(seaweedfs, outputs["7"])  # SaveImageWebsocket: only ever on the socket
    assert websocket_png[:4] == b"\x89PNG" and (outputs["7"].width, outputs["7"].height) == (64, 64)


def test_inputs_are_uploaded_to_comfyui(executor: Executor, seaweedfs: SeaweedFSServer) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (32, 32), (200, 10, 10, 128)).save(buffer, format="PNG")
    upload = request("upload_and_loadimage", "upload-1")
    upload.inputs.add(name="rec_rgba.png", data=buffer.getvalue())
    events = executor.execute(upload)
    assert_one_terminal(events)
    assert kinds(events)[-1] == "succeeded", events[-1]
    assert (executor.checkout.parent / "comfyui" / "input" / "rec_rgba.png").read_bytes() == buffer.getvalue()
    (output,) = events[-1].succeeded.outputs
    assert stored(seaweedfs, output)[:4] == b"\x89PNG"


# -- failures --------------------------------------------------------------------------------------------


def test_a_validation_error_is_typed_per_node_and_not_retried(executor: Executor) -> None:
    events = executor.execute(request("validation_error", "invalid-1"))
    assert kinds(events) == ["failed"]
    failed = events[0].failed
    assert not failed.retryable and failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reason(failed.error) == "WORKFLOW_INVALID"
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in failed.error.details)
    assert {v.field: v.reason for v in bad.field_violations} == {
        'graph.nodes["1"].inputs.width': "VALUE_SMALLER_THAN_MIN",
        'graph.nodes["4"].inputs.image': "RETURN_TYPE_MISMATCH"}


def test_a_runtime_error_fails_with_the_node(executor: Executor) -> None:
    events = executor.execute(request("runtime_error", "runtime-1"))
    assert_one_terminal(events)
    failed = events[-1].failed
    assert not failed.retryable and reason(failed.error) == "NODE_EXECUTION_FAILED"
    info = error_details_pb2.ErrorInfo()
    assert failed.error.details[0].Unpack(info)
    assert (info.metadata["node_id"], info.metadata["class_type"]) == ("2", "SaveImage")


def test_interrupt_cancels_through_comfyuis_targeted_interrupt(executor: Executor) -> None:
    seen, rest = executing(executor, "interrupt", "int-1", until="node_progress")
    assert seen[-1].node_progress.node_id == "3"
    with authed_channel(executor.address, internal_bearer()) as channel:
        assert executor.stub(channel).Interrupt(executor_service_pb2.InterruptRequest(execution_id="int-1"),
                                                timeout=10).interrupted
    events = rest()
    assert_one_terminal(events)
    assert kinds(events)[-1] == "cancelled" and "3" in events[-1].cancelled.reason


def test_a_deadline_interrupts_the_run(executor: Executor) -> None:
    deadline = timestamp_pb2.Timestamp()
    deadline.FromNanoseconds(int((time.time() + 1.5) * 1e9))
    _seen, rest = executing(executor, "interrupt", "deadline-1", until="cancelled", deadline=deadline)
    events = rest()
    assert_one_terminal(events)
    assert kinds(events)[-1] == "cancelled"


def test_comfyui_killed_mid_job_is_retryable_and_replaced(executor: Executor) -> None:
    _seen, rest = executing(executor, "interrupt", "killed-1", until="node_progress")
    (victim,) = executor.comfyui_pids()
    os.kill(victim, signal.SIGKILL)
    events = rest()
    assert_one_terminal(events)
    failed = events[-1].failed
    assert failed.retryable and reason(failed.error) == "EXECUTOR_LOST", failed.error.message
    after = executor.execute(request("image_ok", "after-kill"))
    assert kinds(after)[-1] == "succeeded"
    assert executor.comfyui_pids() and victim not in executor.comfyui_pids()


def test_the_catalog_is_comfyuis_object_info(executor: Executor) -> None:
    with authed_channel(executor.address, internal_bearer()) as channel:
        description = executor.stub(channel).Describe(executor_service_pb2.DescribeRequest(include_catalog=True),
                                                      timeout=30)
    assert description.engine == "comfyui" and description.catalog_hash
    names = {d.name for d in description.catalog}
    assert {"KSampler", "SaveImage", "SaveImageWebsocket", "PreviewAny"} <= names and len(names) == 16


# -- a misbehaving ComfyUI -------------------------------------------------------------------------------


def test_a_node_ignoring_the_interrupt_gets_comfyui_restarted(misbehaving: Callable[..., Any]) -> None:
    with misbehaving(ignore_interrupt=True) as executor:
        (before,) = executor.comfyui_pids()
        _seen, rest = executing(executor, "interrupt", "stubborn-1", until="node_progress")
        with authed_channel(executor.address, internal_bearer()) as channel:
            assert executor.stub(channel).Interrupt(executor_service_pb2.InterruptRequest(), timeout=10).interrupted
        events = rest()
        assert_one_terminal(events)
        failed = events[-1].failed
        assert failed.retryable and reason(failed.error) == "EXECUTOR_LOST"
        assert "ignored the interrupt" in failed.error.message
        assert kinds(executor.execute(request("image_ok", "after-stubborn")))[-1] == "succeeded"
        assert before not in executor.comfyui_pids()


def test_a_dropped_websocket_is_reconciled_from_history(misbehaving: Callable[..., Any],
                                                        seaweedfs: SeaweedFSServer) -> None:
    with misbehaving(drop_websocket_after_frames=4) as executor:
        events = executor.execute(request("image_ok", "dropped-1"))
    assert_one_terminal(events)
    assert kinds(events)[-1] == "succeeded", events[-1]
    (output,) = events[-1].succeeded.outputs
    assert stored(seaweedfs, output)[:4] == b"\x89PNG"
    assert [e.node_executed.node_id for e in events if e.HasField("node_executed")] == ["3"]


def test_a_silent_websocket_is_reconciled_from_history(misbehaving: Callable[..., Any],
                                                       seaweedfs: SeaweedFSServer) -> None:
    with misbehaving(silent_websocket=True) as executor:
        events = executor.execute(request("multi_output", "silent-1"))
    assert_one_terminal(events)
    assert kinds(events)[-1] == "succeeded", events[-1]
    outputs = {o.node_id: o for o in events[-1].succeeded.outputs}
    assert {"3", "4", "6"} <= set(outputs)  # history has every file and text output
    assert stored(seaweedfs, outputs["6"]) == b"hello from the recorder"


def test_frames_of_foreign_prompts_do_not_leak(misbehaving: Callable[..., Any]) -> None:
    with misbehaving(inject_foreign_frames=True) as executor:
        events = executor.execute(request("ksampler_progress", "foreign-1"))
    assert_one_terminal(events)
    assert [(e.node_progress.node_id, e.node_progress.value, e.node_progress.max) for e in events
            if e.HasField("node_progress")] == [("3", step, 6) for step in range(1, 7)]
    graph = recorded_prompt("ksampler_progress")
    assert {e.preview.node_id for e in events if e.HasField("preview")} <= set(graph)
    assert kinds(events)[-1] == "succeeded"


# -- models ----------------------------------------------------------------------------------------------


def test_prefetch_makes_local_and_bucket_models_visible_to_comfyui(tmp_path: Path,
                                                                    seaweedfs: SeaweedFSServer) -> None:
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "loras" / "local.safetensors").write_bytes(b"local model")
    remote = tmp_path / "remote.safetensors"
    remote.write_bytes(os.urandom(4096))
    prefix = f"cu{os.urandom(4).hex()}"
    client = seaweedfs.client()
    client.make_bucket(f"{prefix}-models")
    client.fput_object(f"{prefix}-models", "checkpoints/remote.safetensors", str(remote),
                       metadata={"sha256": hashlib.sha256(remote.read_bytes()).hexdigest()})
    checkout = make_fake_checkout(tmp_path / "checkout", ReplayOptions(time_scale=0.05))
    with running_executor(tmp_path, seaweedfs, checkout, python_executable(), models_dir=str(models),
                          s3_bucket_prefix=prefix) as executor:
        with authed_channel(executor.address, internal_bearer()) as channel:
            reply = executor.stub(channel).PrefetchModels(executor_service_pb2.PrefetchModelsRequest(
                model_names=["remote.safetensors", "loras/local.safetensors"],
                tier=executor_service_pb2.CACHE_TIER_DISK), timeout=60)
            assert [(m.name, m.tier, m.size_bytes) for m in reply.models] == [
                ("remote.safetensors", executor_service_pb2.CACHE_TIER_DISK, 4096),
                ("local.safetensors", executor_service_pb2.CACHE_TIER_DISK, 11)]
            with pytest.raises(grpc.RpcError) as missing:
                executor.stub(channel).PrefetchModels(executor_service_pb2.PrefetchModelsRequest(
                    model_names=["nowhere.safetensors"], tier=executor_service_pb2.CACHE_TIER_RAM), timeout=60)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        paths = (tmp_path / "comfyui" / "extra_model_paths.yaml").read_text()
        assert str(models.resolve()) in paths and str(tmp_path / "comfyui" / "models-view") in paths
        # ComfyUI sees the bucket's model in its view, under its folder and name, with the fetched bytes.
        view = tmp_path / "comfyui" / "models-view" / "checkpoints" / "remote.safetensors"
        assert view.is_symlink() and view.read_bytes() == remote.read_bytes()
        assert f"--extra-model-paths-config {tmp_path / 'comfyui' / 'extra_model_paths.yaml'}".encode() in Path(
            f"/proc/{executor.comfyui_pids()[0]}/cmdline").read_bytes().replace(b"\0", b" ")


def test_a_model_only_the_bucket_holds_is_fetched_before_the_graph_is_posted(tmp_path: Path,
                                                                             seaweedfs: SeaweedFSServer) -> None:
    graph = recorded_prompt("ksampler_progress")
    (ckpt_name,) = {n["inputs"]["ckpt_name"] for n in graph.values() if "ckpt_name" in n["inputs"]}
    model = tmp_path / "model.safetensors"
    model.write_bytes(os.urandom(2048))
    prefix = f"cu{os.urandom(4).hex()}"
    client = seaweedfs.client()
    client.make_bucket(f"{prefix}-models")
    client.fput_object(f"{prefix}-models", f"checkpoints/{ckpt_name}", str(model),
                       metadata={"sha256": hashlib.sha256(model.read_bytes()).hexdigest()})
    checkout = make_fake_checkout(tmp_path / "checkout", ReplayOptions(time_scale=0.05))
    view = tmp_path / "comfyui" / "models-view" / "checkpoints" / ckpt_name
    with running_executor(tmp_path, seaweedfs, checkout, python_executable(), s3_bucket_prefix=prefix) as executor:
        assert not view.exists()  # nobody prefetched it: ComfyUI does not list it yet
        events = executor.execute(request_for(graph, "first-use-1"))
        assert kinds(events)[-1] == "succeeded", events[-1]
        # Fetched (verified against its sha256) and linked before ComfyUI validated the graph, as the built-in
        # engine fetches a model on first use.
        assert view.is_symlink() and view.read_bytes() == model.read_bytes()


def _comfyui_history(executor: Executor) -> dict[str, Any]:
    """The history of the executor's ComfyUI (prompt id → entry), read from its private port."""
    (pid,) = executor.comfyui_pids()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    port = argv[argv.index("--port") + 1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/history?max_items=100", timeout=10) as answer:
        history: dict[str, Any] = json.loads(answer.read())
    return history


def test_a_tenants_own_model_is_named_by_its_plain_name_and_kept_from_other_tenants(
        tmp_path: Path, seaweedfs: SeaweedFSServer) -> None:
    graph = recorded_prompt("ksampler_progress")
    (loader_id, ckpt_name), = {(i, n["inputs"]["ckpt_name"]) for i, n in graph.items() if "ckpt_name" in n["inputs"]}
    prefix = f"cu{os.urandom(4).hex()}"
    client = seaweedfs.client()
    client.make_bucket(f"{prefix}-models")
    files = {}
    for owner, key in (("acme", f"checkpoints/tenants/acme/{ckpt_name}"), ("shared", f"checkpoints/{ckpt_name}")):
        files[owner] = tmp_path / f"{owner}.safetensors"
        files[owner].write_bytes(os.urandom(2048))
        client.fput_object(f"{prefix}-models", key, str(files[owner]),
                           metadata={"sha256": hashlib.sha256(files[owner].read_bytes()).hexdigest()})
    checkout = make_fake_checkout(tmp_path / "checkout", ReplayOptions(time_scale=0.05))
    view = tmp_path / "comfyui" / "models-view" / "checkpoints"
    with running_executor(tmp_path, seaweedfs, checkout, python_executable(), s3_bucket_prefix=prefix) as executor:
        def run(execution_id: str, tenant: str, ckpt: str = ckpt_name) -> tuple[list[pb.ExecutionEvent], Any]:
            request = request_for({**graph, loader_id: {**graph[loader_id],
                                                         "inputs": {**graph[loader_id]["inputs"], "ckpt_name": ckpt}}},
                                  execution_id)
            request.tenant = tenant
            events = executor.execute(request)
            posted = _comfyui_history(executor).get(prompt_id_for(execution_id, 1))
            return events, posted["prompt"][2][loader_id]["inputs"]["ckpt_name"] if posted else None

        # The tenant's own model wins over the shared one of the same name, as on the built-in engine: it is
        # fetched, linked under the tenant's path, and the graph ComfyUI runs names that path.
        events, posted = run("tenant-own-1", "acme")
        assert kinds(events)[-1] == "succeeded", events[-1]
        assert posted == f"tenants/acme/{ckpt_name}"
        assert (view / "tenants" / "acme" / ckpt_name).read_bytes() == files["acme"].read_bytes()
        assert not (view / ckpt_name).exists()

        # Another tenant naming the same plain name gets the shared model, never acme's.
        events, posted = run("tenant-other-1", "other")
        assert kinds(events)[-1] == "succeeded", events[-1]
        assert posted == ckpt_name and (view / ckpt_name).read_bytes() == files["shared"].read_bytes()

        # ComfyUI lists acme's link (the view is shared), but no graph may name a tenant's storage path: refused as
        # ComfyUI refuses an unknown model, before anything is posted.
        events, posted = run("tenant-steal-1", "other", f"tenants/acme/{ckpt_name}")
        assert kinds(events) == ["failed"] and posted is None
        failed = events[0].failed
        assert not failed.retryable and reason(failed.error) == "WORKFLOW_INVALID"
        bad = error_details_pb2.BadRequest()
        assert any(detail.Unpack(bad) for detail in failed.error.details)
        assert [v.field for v in bad.field_violations] == [f'graph.nodes["{loader_id}"].inputs.ckpt_name']

        # The catalog the executor reports never carries tenants' paths.
        with authed_channel(executor.address, internal_bearer()) as channel:
            description = executor.stub(channel).Describe(
                executor_service_pb2.DescribeRequest(include_catalog=True), timeout=30)
        assert "tenants/" not in str(description.catalog)


# -- an attached ComfyUI (COMFYMESH_COMFYUI_URL) ---------------------------------------------------------


def comfyui_server(checkout: Path, port: int, root: Path) -> ManagedProcess:
    """A ComfyUI (replay server) started by the test, as someone else's ComfyUI would be."""
    for name in ("output", "input", "temp", "user"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return ManagedProcess([python_executable(), str(checkout / "main.py"), "--listen", "127.0.0.1", "--port",
                           str(port), "--output-directory", str(root / "output"), "--input-directory",
                           str(root / "input"), "--temp-directory", str(root / "temp"), "--user-directory",
                           str(root / "user")], log_path=root / "comfyui.log", cwd=checkout, name="comfyui")


def test_an_attached_comfyui_is_used_and_polled_until_it_is_back(tmp_path: Path,
                                                                  seaweedfs: SeaweedFSServer) -> None:
    checkout = make_fake_checkout(tmp_path / "attached", ReplayOptions(time_scale=0.05))
    port = free_port()
    server = comfyui_server(checkout, port, tmp_path / "attached-files").start()
    try:
        server.wait_ready(lambda: check_http(port), 60)
        with running_executor(tmp_path / "executor", seaweedfs, tmp_path / "no-checkout", python_executable(),
                              comfyui_url=f"http://127.0.0.1:{port}") as executor:
            assert not executor.comfyui_pids()  # attached: the executor starts no ComfyUI of its own
            assert kinds(executor.execute(request("image_ok", "attached-1")))[-1] == "succeeded"
            server.stop(grace=10)
            events = executor.execute(request("image_ok", "attached-2"))
            assert kinds(events) == ["failed"] and events[0].failed.retryable
            assert reason(events[0].failed.error) == "EXECUTOR_LOST"
            server = comfyui_server(checkout, port, tmp_path / "attached-files").start()
            server.wait_ready(lambda: check_http(port), 60)
            assert kinds(executor.execute(request("image_ok", "attached-3")))[-1] == "succeeded"
    finally:
        server.stop(grace=10)


def check_http(port: int) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats",
                                                              timeout=1) as answer:
        return bool(answer.status == 200)
    return False
