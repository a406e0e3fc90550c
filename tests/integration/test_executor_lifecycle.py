"""The executor process's life: it answers soon after it starts, warms up and preloads before it joins the fleet,
registers with the ExecutionService and heartbeats (registering again when forgotten), and on SIGTERM drains:
new work is refused with EXECUTOR_DRAINING, the running execution ends with its terminal event (finished, or
interrupted after the grace period), the executor deregisters and the process exits 0.

The ExecutionService here is a real gRPC server started by the test that records the calls (it stands in for the
registry in services/execution for these membership tests)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, empty_pb2

from comfymesh.common.v1 import execution_event_pb2 as epb
from comfymesh.execution.v1 import execution_service_pb2 as xpb
from comfymesh.execution.v1 import execution_service_pb2_grpc
from comfymesh.executor.v1 import executor_service_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2_grpc
from gpu_executor.diffusion.models.testing import make_tiny_lora, make_tiny_sd1_checkpoint
from service_runtime.processes import ManagedProcess, free_port
from service_runtime.transport.catalog_codec import object_info_from_definition
from service_runtime.transport.graph_codec import graph_to_proto
from tests.fixtures.auth import authed_channel, internal_bearer, secret_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_SECONDS = 0.3

WARMUP: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "warm.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "warm up", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "warm"}},
}
SLEEP_PACK = '''
import time
from gpu_executor.engine.runtime import ProgressBar

class Sleep:
    RETURN_TYPES = ()
    FUNCTION = "go"
    OUTPUT_NODE = True
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 600.0})}}
    def go(self, seconds):
        bar = ProgressBar(max(1, int(seconds * 10)))
        for _ in range(bar.total):
            time.sleep(0.1)
            bar.update(1)   # checks for interruption
        return {}

NODE_CLASS_MAPPINGS = {"Sleep": Sleep}
'''


@dataclass
class FakeExecutionService(execution_service_pb2_grpc.ExecutionServiceServicer):
    """Records RegisterExecutor / Heartbeat / DeregisterExecutor calls; `forget` answers the next heartbeat with
    known=false (as the registry does once it expired an executor)."""

    calls: list[tuple[str, float, Any]] = field(default_factory=list)
    forget: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, method: str, request: Any) -> None:
        copied = type(request)()
        copied.CopyFrom(request)
        with self.lock:
            self.calls.append((method, time.time(), copied))

    def of(self, method: str) -> list[Any]:
        with self.lock:
            return [request for name, _, request in self.calls if name == method]

    def RegisterExecutor(self, request: xpb.RegisterExecutorRequest, context: Any) -> xpb.RegisterExecutorResponse:
        self._record("register", request)
        interval = duration_pb2.Duration()
        interval.FromNanoseconds(int(HEARTBEAT_SECONDS * 1e9))
        return xpb.RegisterExecutorResponse(executor=xpb.Executor(executor_id=request.executor_id),
                                            heartbeat_interval=interval)

    def Heartbeat(self, request: xpb.HeartbeatRequest, context: Any) -> xpb.HeartbeatResponse:
        self._record("heartbeat", request)
        with self.lock:
            known, self.forget = not self.forget, False
        return xpb.HeartbeatResponse(known=known)

    def DeregisterExecutor(self, request: xpb.DeregisterExecutorRequest, context: Any) -> empty_pb2.Empty:
        self._record("deregister", request)
        return empty_pb2.Empty()


@dataclass(frozen=True)
class Running:
    process: ManagedProcess
    address: str
    port: int
    started_at: float  # time.monotonic() just before the process was started
    answered_at: float  # ... when Describe first answered
    home: Path | None = None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def describe(address: str, timeout: float = 10) -> pb.ExecutorDescription:
    with authed_channel(address, internal_bearer()) as channel:
        return executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Describe(pb.DescribeRequest(),
                                                                                  timeout=timeout)


def start_executor(home: Path, **env: str) -> Running:
    pack = home / "custom_nodes"
    pack.mkdir(exist_ok=True)
    (pack / "sleep.py").write_text(SLEEP_PACK)
    port = free_port()
    environment = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_EXECUTOR_PORT": str(port),
                   "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_CUSTOM_NODES_DIRS": str(pack),
                   "COMFYMESH_LOG_LEVEL": "INFO", **secret_env(), **env}
    process = ManagedProcess([sys.executable, "-m", "gpu_executor", "serve"], log_path=home / "executor.log",
                             env=environment, cwd=ROOT, name="executor")
    started_at = time.monotonic()
    process.start()
    address = f"127.0.0.1:{port}"

    def answers() -> bool:
        describe(address, timeout=0.5)
        return True

    try:
        process.wait_ready(answers, 60)
    except BaseException:
        process.stop(grace=5)
        raise
    return Running(process, address, port, started_at, time.monotonic(), home)


def sleep_request(execution_id: str, seconds: float) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(execution_id=execution_id, attempt=1, output_prefix=f"executions/{execution_id}",
                             graph=graph_to_proto({"1": {"class_type": "Sleep", "inputs": {"seconds": seconds}}}))


def refused_reason(address: str, request: pb.ExecuteRequest) -> str:
    """The ErrorInfo reason an Execute is refused with (it must be refused)."""
    with authed_channel(address, internal_bearer()) as channel, pytest.raises(grpc.RpcError) as caught:
        list(executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Execute(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value  # type: ignore[attr-defined]
    metadata: Any = caught.value.trailing_metadata() or ()  # type: ignore[attr-defined]
    details = dict(metadata)
    text = str(details.get("grpc-status-details-bin", b""))
    return next((r for r in ("EXECUTOR_DRAINING", "EXECUTOR_BUSY") if r in text), text)


class Stream:
    """An Execute stream read in a thread, so the test can act while it runs."""

    def __init__(self, address: str, request: pb.ExecuteRequest) -> None:
        self.events: list[epb.ExecutionEvent] = []
        self.error: BaseException | None = None
        self.ended_at = 0.0
        self._channel = authed_channel(address, internal_bearer())
        self._call = executor_service_pb2_grpc.GpuExecutorServiceStub(self._channel).Execute(request, timeout=120)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._call:
                self.events.append(event)
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.ended_at = time.time()

    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("kind")) for e in self.events]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._channel.close()
        assert not self._thread.is_alive(), "the stream did not end"
        assert self.error is None, self.error


@pytest.fixture(scope="module")
def registry() -> Iterator[tuple[FakeExecutionService, int]]:
    fake = FakeExecutionService()  # type: ignore[abstract]  # only the membership RPCs
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, port
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory,
           registry: tuple[FakeExecutionService, int]) -> Iterator[Running]:
    """An executor with a warm-up graph and a preloaded LoRA, registering with the fake execution service."""
    _fake, registry_port = registry
    home = tmp_path_factory.mktemp("executor-fleet")
    checkpoint = make_tiny_sd1_checkpoint(seed=0)
    models = home / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "loras").mkdir()
    (models / "checkpoints" / "warm.safetensors").symlink_to(checkpoint)
    make_tiny_lora(models / "loras" / "style.safetensors", checkpoint, rank=2, seed=5)
    warmup = home / "warmup.json"
    warmup.write_text(json.dumps({"prompt": WARMUP}))
    running = start_executor(home, COMFYMESH_MODELS_DIR=str(models),
                             COMFYMESH_EXECUTION_ADDR=f"127.0.0.1:{registry_port}",
                             COMFYMESH_EXECUTOR_ID="exec-test-1", COMFYMESH_EXECUTOR_LABELS="pool=test, provider=local",
                             COMFYMESH_EXECUTOR_WARMUP_GRAPH=str(warmup),
                             COMFYMESH_EXECUTOR_PRELOAD_MODELS="loras/style.safetensors",
                             COMFYMESH_SHUTDOWN_GRACE_SECONDS="30", COMFYMESH_EXECUTOR_MODELS_RESCAN_SECONDS="0.5")
    try:
        yield running
    finally:
        running.process.stop(grace=30)


def test_registers_after_warm_up_and_heartbeats_without_the_catalog(
        member: Running, registry: tuple[FakeExecutionService, int]) -> None:
    fake, _ = registry
    wait_for(lambda: len(fake.of("heartbeat")) >= 2, 180, "registration and two heartbeats")
    (registration,) = fake.of("register")
    assert registration.executor_id == "exec-test-1"
    assert registration.address == f"127.0.0.1:{member.port}"
    assert dict(registration.labels) == {"pool": "test", "provider": "local"}
    description = registration.description
    assert description.executor_id == "exec-test-1" and description.state == pb.EXECUTOR_STATE_IDLE
    assert {"KSampler", "Sleep"} <= {d.name for d in description.catalog} and description.catalog_hash
    # Warm-up and preloading happened before registration: the executor joined with its models loaded.
    loaded = {(m.name, m.tier) for m in description.cached_models}
    tier = pb.CACHE_TIER_GPU if description.device.kind == "cuda" else pb.CACHE_TIER_RAM
    assert ("warm.safetensors", tier) in loaded
    assert ("style.safetensors", pb.CACHE_TIER_RAM) in loaded
    ram = next(s for s in description.cache_stats if s.tier == pb.CACHE_TIER_RAM)
    assert ram.misses >= 2 and ram.bytes_loaded > 0

    beat = fake.of("heartbeat")[-1]
    assert beat.executor_id == "exec-test-1" and not beat.description.catalog
    assert beat.description.catalog_hash == description.catalog_hash
    assert beat.description.state == pb.EXECUTOR_STATE_IDLE and beat.description.device.memory_total_bytes > 0
    assert ("warm.safetensors", tier) in {(m.name, m.tier) for m in beat.description.cached_models}
    assert {s.tier for s in beat.description.cache_stats} >= {pb.CACHE_TIER_RAM, pb.CACHE_TIER_DISK}


def test_registers_again_when_the_registry_forgot_it(member: Running,
                                                    registry: tuple[FakeExecutionService, int]) -> None:
    fake, _ = registry
    wait_for(lambda: len(fake.of("register")) >= 1, 180, "the first registration")
    with fake.lock:
        fake.forget = True
    wait_for(lambda: len(fake.of("register")) >= 2, 30, "a second registration")
    again = fake.of("register")[-1]
    assert again.executor_id == "exec-test-1" and again.description.catalog
    beats = len(fake.of("heartbeat"))
    wait_for(lambda: len(fake.of("heartbeat")) >= beats + 2, 30, "heartbeats after registering again")


def _checkpoint_choices(description: pb.ExecutorDescription) -> list[str]:
    loader = next(d for d in description.catalog if d.name == "CheckpointLoaderSimple")
    return list(object_info_from_definition(loader)["input"]["required"]["ckpt_name"][0])


def test_a_model_file_added_while_running_reaches_the_catalog_and_the_fleet(
        member: Running, registry: tuple[FakeExecutionService, int]) -> None:
    fake, _ = registry
    wait_for(lambda: len(fake.of("register")) >= 1, 180, "the first registration")
    before = describe(member.address).catalog_hash
    assert member.home is not None
    added = member.home / "models" / "checkpoints" / "added.safetensors"
    added.symlink_to((member.home / "models" / "checkpoints" / "warm.safetensors").resolve())
    try:
        # The executor lists its catalog again (the loaders' choices) and sends it with its next report.
        def reported() -> bool:
            sent = [m.description for kind in ("register", "heartbeat") for m in fake.of(kind)
                    if m.description.catalog and m.description.catalog_hash != before]
            return any("added.safetensors" in _checkpoint_choices(d) for d in sent)

        wait_for(reported, 30, "a catalog listing the added checkpoint")
        with authed_channel(member.address, internal_bearer()) as channel:
            now = executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Describe(
                pb.DescribeRequest(include_catalog=True), timeout=10)
        assert now.catalog_hash != before and "added.safetensors" in _checkpoint_choices(now)
    finally:
        added.unlink()
    wait_for(lambda: describe(member.address).catalog_hash == before, 30, "the catalog without the removed file")


def test_sigterm_drains_finishes_the_running_execution_and_deregisters(
        member: Running, registry: tuple[FakeExecutionService, int]) -> None:
    fake, _ = registry
    wait_for(lambda: len(fake.of("register")) >= 1, 180, "registration")
    stream = Stream(member.address, sleep_request("finishing", 4.0))
    wait_for(lambda: "node_started" in stream.kinds(), 60, "the execution to start")
    assert member.process.pid is not None
    os.killpg(member.process.pid, signal.SIGTERM)  # the whole group, as `docker stop`-like tools and Ctrl-C do
    wait_for(lambda: describe(member.address).state == pb.EXECUTOR_STATE_DRAINING, 10, "DRAINING")
    assert refused_reason(member.address, sleep_request("too-late", 1.0)) == "EXECUTOR_DRAINING"
    wait_for(lambda: any(b.description.state == pb.EXECUTOR_STATE_DRAINING for b in fake.of("heartbeat")), 10,
             "a heartbeat reporting DRAINING")

    stream.join(60)
    assert stream.kinds()[-1] == "succeeded", stream.kinds()  # the running execution finished normally
    assert member.process.wait(60) == 0, member.process.log_tail()
    (deregistration,) = fake.of("deregister")
    assert deregistration.executor_id == "exec-test-1"
    deregistered_at = next(t for name, t, _ in fake.calls if name == "deregister")
    assert deregistered_at >= stream.ended_at - 1.0  # after the execution ended, not before


def test_sigterm_interrupts_an_execution_that_outlives_the_grace_period(tmp_path: Path) -> None:
    running = start_executor(tmp_path, COMFYMESH_EXECUTOR_REGISTER="false", COMFYMESH_SHUTDOWN_GRACE_SECONDS="1")
    try:
        # Ready soon after the start, without models (the target is 2 s; a loaded CI machine gets slack).
        assert running.answered_at - running.started_at < 5.0
        assert describe(running.address).state in (pb.EXECUTOR_STATE_STARTING, pb.EXECUTOR_STATE_IDLE)
        stream = Stream(running.address, sleep_request("long", 120.0))
        wait_for(lambda: "node_started" in stream.kinds(), 60, "the execution to start")
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)  # the server process alone, as Kubernetes does
        stream.join(60)
        assert stream.kinds()[-1] == "cancelled", stream.kinds()  # interrupted after the grace, yet terminal
        assert running.process.wait(60) == 0, running.process.log_tail()
        assert time.monotonic() - started < 30
    finally:
        running.process.stop(grace=5)


def test_the_server_process_stays_light(tmp_path: Path) -> None:
    """The gRPC server never imports torch (the worker does): its resident memory stays far below a torch
    process's, and it answers Describe long before the worker is ready."""
    running = start_executor(tmp_path, COMFYMESH_EXECUTOR_REGISTER="false")
    try:
        first = describe(running.address)
        assert first.state in (pb.EXECUTOR_STATE_STARTING, pb.EXECUTOR_STATE_IDLE)
        wait_for(lambda: describe(running.address).state == pb.EXECUTOR_STATE_IDLE, 120, "IDLE")
        status = Path(f"/proc/{running.process.pid}/status").read_text()
        rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        assert rss_kb < 200_000, f"server RSS {rss_kb} kB"  # importing torch alone takes it past 300 MB
    finally:
        assert running.process.stop(grace=20) == 0

