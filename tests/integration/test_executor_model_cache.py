"""The executor's model cache tiers, on a real executor process with real SeaweedFS and a tiny real-layout SD1
checkpoint: a second txt2img run hits the loaded models (RAM, or GPU on a GPU), a model only in the object store is
fetched into the disk cache (sha256-verified) and used, PrefetchModels loads to RAM and is reflected in Describe,
and everything shows in Describe and in the Prometheus metrics."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from comfymesh.common.v1 import execution_event_pb2 as epb
from comfymesh.executor.v1 import executor_service_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2_grpc
from gpu_executor.diffusion.models.testing import make_tiny_lora, make_tiny_sd1_checkpoint
from service_runtime.processes import ManagedProcess, SeaweedFSServer, free_port
from service_runtime.transport.graph_codec import graph_to_proto
from tests.fixtures.auth import authed_channel, internal_bearer, secret_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

TXT2IMG: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "local.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t2i"}},
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


@dataclass(frozen=True)
class Executor:
    address: str
    home: Path
    metrics_url: str
    sha256: str  # of the tiny checkpoint
    size: int
    lora_sha256: str
    pid: int  # of the server process


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFSServer) -> Iterator[Executor]:
    home = tmp_path_factory.mktemp("executor-cache")
    checkpoint = make_tiny_sd1_checkpoint(seed=0)
    models = home / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "local.safetensors").symlink_to(checkpoint)
    (models / "checkpoints" / "prefetch.safetensors").symlink_to(make_tiny_sd1_checkpoint(seed=1))
    pack = home / "custom_nodes"
    pack.mkdir()
    (pack / "sleep.py").write_text(SLEEP_PACK)
    lora = make_tiny_lora(home / "lora.safetensors", checkpoint, rank=2, seed=3)

    prefix = f"mc{secrets.token_hex(4)}"  # buckets of this module only
    client = seaweedfs.client()
    bucket = f"{prefix}-models"
    client.make_bucket(bucket)
    sha256 = file_sha256(checkpoint)
    client.fput_object(bucket, "checkpoints/remote.safetensors", str(checkpoint), metadata={"sha256": sha256})
    # A tenant's own upload (ModelService's layout for a non-default tenant).
    client.fput_object(bucket, "checkpoints/tenants/acme/mine.safetensors", str(checkpoint),
                       metadata={"sha256": sha256})
    lora_sha256 = file_sha256(lora)
    client.fput_object(bucket, "loras/sidecar.safetensors", str(lora))  # its digest in a sidecar object
    sidecar = f"{lora_sha256}  sidecar.safetensors\n".encode()
    client.put_object(bucket, "loras/sidecar.safetensors.sha256", io.BytesIO(sidecar), len(sidecar))
    client.fput_object(bucket, "loras/corrupt.safetensors", str(lora), metadata={"sha256": "0" * 64})

    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_EXECUTOR_PORT": str(port),
           "COMFYMESH_METRICS_PORT": str(metrics_port), "COMFYMESH_S3_ENDPOINT": seaweedfs.endpoint,
           "COMFYMESH_S3_ACCESS_KEY": seaweedfs.access_key, "COMFYMESH_S3_SECRET_KEY": seaweedfs.secret_key,
           "COMFYMESH_S3_BUCKET_PREFIX": prefix, "COMFYMESH_MODELS_DIR": str(models),
           "COMFYMESH_CUSTOM_NODES_DIRS": str(pack), "COMFYMESH_EXECUTOR_REGISTER": "false",
           **secret_env()}
    process = ManagedProcess([sys.executable, "-m", "gpu_executor", "serve"], log_path=home / "executor.log",
                             env=env, cwd=ROOT, name="executor").start()
    try:
        process.wait_ready(lambda: describe(f"127.0.0.1:{port}").state == pb.EXECUTOR_STATE_IDLE, 120)
        assert process.pid is not None
        yield Executor(f"127.0.0.1:{port}", home, f"http://127.0.0.1:{metrics_port}/metrics", sha256,
                       checkpoint.stat().st_size, lora_sha256, process.pid)
    finally:
        assert process.stop(grace=30) == 0, process.log_tail()


def stub(address: str) -> executor_service_pb2_grpc.GpuExecutorServiceStub:
    return executor_service_pb2_grpc.GpuExecutorServiceStub(authed_channel(address, internal_bearer()))


def run(address: str, graph: dict[str, Any], execution_id: str) -> list[epb.ExecutionEvent]:
    request = pb.ExecuteRequest(execution_id=execution_id, attempt=1, graph=graph_to_proto(graph),
                                output_prefix=f"executions/{execution_id}")
    return list(stub(address).Execute(request, timeout=240))


def txt2img(ckpt_name: str, seed: int) -> dict[str, Any]:
    graph = copy.deepcopy(TXT2IMG)
    graph["4"]["inputs"]["ckpt_name"] = ckpt_name
    graph["3"]["inputs"]["seed"] = seed
    return graph


def describe(address: str) -> pb.ExecutorDescription:
    return stub(address).Describe(pb.DescribeRequest(), timeout=30)


def stats(description: pb.ExecutorDescription, tier: int) -> pb.CacheTierStats:
    found = [s for s in description.cache_stats if s.tier == tier]
    assert len(found) == 1, description.cache_stats
    return found[0]


def held(description: pb.ExecutorDescription, name: str) -> dict[int, pb.CachedModel]:
    return {m.tier: m for m in description.cached_models if m.name == name}


def loaded_tier(description: pb.ExecutorDescription) -> int:
    """Where a used model stays: the GPU on a GPU executor; RAM on a CPU-only one (there is no GPU tier there)."""
    return pb.CACHE_TIER_GPU if description.device.kind == "cuda" else pb.CACHE_TIER_RAM


def reason(error: grpc.RpcError) -> str:
    status = status_pb2.Status()
    metadata: Any = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info), error
    return str(info.reason)


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_second_run_hits_the_loaded_model(executor: Executor) -> None:
    before = describe(executor.address)
    tier = loaded_tier(before)
    assert pb.CACHE_TIER_GPU not in {s.tier for s in before.cache_stats} or before.device.kind == "cuda"
    assert (stats(before, tier).hits, stats(before, tier).misses) == (0, 0)
    assert not held(before, "local.safetensors").get(tier)

    first = run(executor.address, txt2img("local.safetensors", seed=1), "cold")
    assert first[-1].WhichOneof("kind") == "succeeded", first[-1]
    cold = describe(executor.address)
    assert (stats(cold, tier).hits, stats(cold, tier).misses) == (0, 1)  # the first run missed: loaded from disk
    ram = stats(cold, pb.CACHE_TIER_RAM)
    assert ram.bytes_loaded > 0 and ram.load_seconds > 0 and ram.bytes_used > 0 and ram.bytes_capacity > 0
    model = held(cold, "local.safetensors")[tier]
    assert model.size_bytes > 0 and model.last_used_time.seconds > 0
    disk = held(cold, "local.safetensors")[pb.CACHE_TIER_DISK]  # the models directory is part of the disk tier
    assert disk.size_bytes == executor.size
    assert stats(cold, pb.CACHE_TIER_DISK).hits >= 1

    second = run(executor.address, txt2img("local.safetensors", seed=2), "warm")
    assert second[-1].WhichOneof("kind") == "succeeded", second[-1]
    warm = describe(executor.address)
    assert (stats(warm, tier).hits, stats(warm, tier).misses) == (1, 1)  # the second run hit
    assert stats(warm, pb.CACHE_TIER_RAM).bytes_loaded == ram.bytes_loaded  # nothing was loaded again
    assert held(warm, "local.safetensors")[tier].last_used_time.ToNanoseconds() >= model.last_used_time.ToNanoseconds()

    text = urllib.request.urlopen(executor.metrics_url, timeout=10).read().decode()  # noqa: S310 - http://127.0.0.1
    tier_label = "gpu" if tier == pb.CACHE_TIER_GPU else "ram"
    assert (metric(text, "model_load_time_seconds_count", tier=tier_label) or 0) >= 1
    assert metric(text, "cache_hit_rate", tier=tier_label) == pytest.approx(0.5)
    assert (metric(text, "model_cache_bytes", tier=tier_label) or 0) > 0
    assert (metric(text, "memory_usage_bytes", component="server", device="") or 0) > 0
    assert (metric(text, "memory_usage_bytes", component="worker", device="") or 0) > 0
    assert "# TYPE gpu_utilization_percent gauge" in text


def test_a_model_only_in_the_object_store_is_fetched_verified_and_used(executor: Executor) -> None:
    with authed_channel(executor.address, internal_bearer()) as channel:
        catalog = executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Describe(
            pb.DescribeRequest(include_catalog=True), timeout=60).catalog
    loader = next(d for d in catalog if d.name == "CheckpointLoaderSimple")
    assert "remote.safetensors" in loader.object_info_json  # offered to graphs although not on local disk
    before = describe(executor.address)
    assert not held(before, "remote.safetensors")
    fetched_before = stats(before, pb.CACHE_TIER_OBJECT_STORE)

    events = run(executor.address, txt2img("remote.safetensors", seed=3), "remote")
    assert events[-1].WhichOneof("kind") == "succeeded", events[-1]
    after = describe(executor.address)
    remote = stats(after, pb.CACHE_TIER_OBJECT_STORE)
    assert remote.hits == fetched_before.hits + 1
    assert remote.bytes_loaded == fetched_before.bytes_loaded + executor.size and remote.load_seconds > 0
    on_disk = held(after, "remote.safetensors")[pb.CACHE_TIER_DISK]
    assert on_disk.sha256 == executor.sha256 and on_disk.size_bytes == executor.size
    assert held(after, "remote.safetensors")[loaded_tier(after)].sha256 == executor.sha256
    cached = executor.home / "model-cache" / executor.sha256[:2] / executor.sha256
    assert file_sha256(cached) == executor.sha256
    assert not list((executor.home / "model-cache").rglob(".tmp-*"))

    again = run(executor.address, txt2img("remote.safetensors", seed=4), "remote-again")
    assert again[-1].WhichOneof("kind") == "succeeded"
    assert stats(describe(executor.address), pb.CACHE_TIER_OBJECT_STORE).hits == remote.hits  # not fetched again


def test_object_store_checksums_are_enforced(executor: Executor) -> None:
    client = stub(executor.address)
    with pytest.raises(grpc.RpcError) as caught:
        client.PrefetchModels(pb.PrefetchModelsRequest(model_names=["loras/corrupt.safetensors"],
                                                       tier=pb.CACHE_TIER_DISK), timeout=60)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS  # type: ignore[attr-defined]
    assert reason(caught.value) == "MODEL_CHECKSUM_MISMATCH"
    assert not held(describe(executor.address), "corrupt.safetensors")
    assert not list((executor.home / "model-cache").rglob(".tmp-*"))

    reply = client.PrefetchModels(pb.PrefetchModelsRequest(model_names=["sidecar.safetensors"],
                                                           tier=pb.CACHE_TIER_DISK), timeout=60)
    (model,) = reply.models
    assert (model.name, model.tier, model.sha256) == ("sidecar.safetensors", pb.CACHE_TIER_DISK,
                                                      executor.lora_sha256)


def test_prefetch_loads_to_ram_and_is_reflected_in_describe(executor: Executor) -> None:
    client = stub(executor.address)
    before = describe(executor.address)
    assert not held(before, "prefetch.safetensors").get(pb.CACHE_TIER_RAM)
    reply = client.PrefetchModels(pb.PrefetchModelsRequest(model_names=["prefetch.safetensors"],
                                                           tier=pb.CACHE_TIER_RAM), timeout=120)
    (model,) = reply.models
    assert (model.name, model.tier) == ("prefetch.safetensors", pb.CACHE_TIER_RAM) and model.size_bytes > 0
    assert reply.duration.ToNanoseconds() > 0
    after = describe(executor.address)
    assert held(after, "prefetch.safetensors")[pb.CACHE_TIER_RAM].size_bytes == model.size_bytes
    assert stats(after, pb.CACHE_TIER_RAM).misses == stats(before, pb.CACHE_TIER_RAM).misses + 1

    with pytest.raises(grpc.RpcError) as caught:
        client.PrefetchModels(pb.PrefetchModelsRequest(model_names=["no-such-model.safetensors"],
                                                       tier=pb.CACHE_TIER_RAM), timeout=60)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert reason(caught.value) == "MODEL_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as caught:
        client.PrefetchModels(pb.PrefetchModelsRequest(model_names=["prefetch.safetensors"]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_prefetch_is_refused_while_an_execution_runs(executor: Executor) -> None:
    client = stub(executor.address)
    request = pb.ExecuteRequest(execution_id="sleeper", attempt=1, output_prefix="executions/sleeper",
                                graph=graph_to_proto({"1": {"class_type": "Sleep", "inputs": {"seconds": 60.0}}}))
    running = client.Execute(request, timeout=120)
    kinds = [next(running).WhichOneof("kind") for _ in range(2)]
    assert kinds == ["started", "node_started"]
    with pytest.raises(grpc.RpcError) as caught:
        client.PrefetchModels(pb.PrefetchModelsRequest(model_names=["local.safetensors"],
                                                       tier=pb.CACHE_TIER_RAM), timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert reason(caught.value) == "EXECUTOR_BUSY"
    assert describe(executor.address).state == pb.EXECUTOR_STATE_BUSY
    started = time.monotonic()
    assert client.Interrupt(pb.InterruptRequest(execution_id="sleeper"), timeout=10).interrupted
    assert list(running)[-1].WhichOneof("kind") == "cancelled"
    assert time.monotonic() - started < 30


def worker_pid(server_pid: int) -> int:
    for child in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError("no worker process")


def test_a_worker_that_dies_while_idle_is_replaced_and_its_models_reported_gone(executor: Executor) -> None:
    before = describe(executor.address)
    tier = loaded_tier(before)
    assert held(before, "local.safetensors").get(tier)
    counted = stats(before, pb.CACHE_TIER_RAM)
    old = worker_pid(executor.pid)
    os.kill(old, signal.SIGKILL)  # the kernel's OOM killer, say, between two jobs

    def replaced() -> bool:
        try:
            return worker_pid(executor.pid) != old and describe(executor.address).state == pb.EXECUTOR_STATE_IDLE
        except AssertionError:
            return False

    deadline = time.monotonic() + 120
    while not replaced():
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)
    after = describe(executor.address)
    assert not held(after, "local.safetensors").get(tier)  # what the dead worker held is not reported
    assert held(after, "remote.safetensors")[pb.CACHE_TIER_DISK].sha256 == executor.sha256  # the disk cache stays
    ram = stats(after, pb.CACHE_TIER_RAM)
    assert (ram.hits, ram.misses, ram.bytes_loaded) == (counted.hits, counted.misses, counted.bytes_loaded)
    assert ram.bytes_used == 0

    events = run(executor.address, txt2img("local.safetensors", seed=9), "after-worker-death")
    assert events[-1].WhichOneof("kind") == "succeeded"
    assert stats(describe(executor.address), pb.CACHE_TIER_RAM).misses == counted.misses + 1  # loaded again


def _run_as(address: str, graph: dict[str, Any], execution_id: str, tenant: str) -> list[epb.ExecutionEvent]:
    request = pb.ExecuteRequest(execution_id=execution_id, attempt=1, graph=graph_to_proto(graph),
                                output_prefix=f"executions/{execution_id}", tenant=tenant)
    return list(stub(address).Execute(request, timeout=240))


def test_a_tenants_own_models_are_its_alone(executor: Executor) -> None:
    """A tenant's upload runs under its plain name for that tenant only; nobody can name it by its storage path,
    and cached outputs of one tenant's job never serve another tenant's."""
    with authed_channel(executor.address, internal_bearer()) as channel:
        catalog = executor_service_pb2_grpc.GpuExecutorServiceStub(channel).Describe(
            pb.DescribeRequest(include_catalog=True), timeout=60).catalog
    loader = next(d for d in catalog if d.name == "CheckpointLoaderSimple")
    assert "tenants/" not in loader.object_info_json  # private names are not offered to everyone

    mine = _run_as(executor.address, txt2img("mine.safetensors", seed=5), "tenant-acme", "acme")
    assert mine[-1].WhichOneof("kind") == "succeeded", mine[-1]
    for execution_id, tenant, name in (("tenant-other", "other", "mine.safetensors"),
                                       ("tenant-default", "", "mine.safetensors"),
                                       ("tenant-path", "other", "tenants/acme/mine.safetensors"),
                                       ("tenant-own-path", "acme", "tenants/acme/mine.safetensors")):
        events = _run_as(executor.address, txt2img(name, seed=5), execution_id, tenant)
        assert events[-1].WhichOneof("kind") == "failed", (execution_id, events[-1])
