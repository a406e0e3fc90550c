"""The GPU executor process: start → ready, model load throughput per cache tier against the raw rate of the same
medium, the same tiny txt2img job cold and warm, and idle memory of the server and of the worker.

    .venv/bin/python -m bench.executor [--size-mb 1024] [--quick]

It starts its own SeaweedFS and executor process (`python -m gpu_executor serve`) and generates a safetensors file
of random tensors (`--size-mb`, default 1024; `--quick`: 128). Every figure is measured in this run:

- object store → disk: PrefetchModels(DISK) of the file, which is only in the models bucket (streamed into the
  disk cache, sha256-verified, fsynced), against a raw S3 GET of the same object with the minio client whose bytes
  go nowhere, and a raw write + fsync of the same bytes to the same disk (the tier can go no faster than either);
- disk → RAM: PrefetchModels(RAM) of it (the RAM tier's safetensors loader, in the worker) with the file dropped
  from the page cache first (cold) and again from the page cache (warm, through a hard link: a second name of the
  same file), against a raw read of the file through a reused buffer (the medium) and into one new buffer of the
  file's size (the least "fully in memory" can cost: fresh memory is zeroed by the kernel on first touch), cold
  and warm;
- RAM → device: PrefetchModels(GPU) on a GPU, against a raw host → device copy; without a GPU "not measured";
- memcpy of the same bytes, for scale.

The tier figures are the worker's own load times (Describe's cache_stats), without the RPC around them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import torch
from safetensors.torch import save_file

from comfymesh.executor.v1 import executor_service_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2_grpc
from gpu_executor.diffusion.models.testing import make_tiny_sd1_checkpoint
from service_runtime.auth.credentials import internal_credential
from service_runtime.processes import ManagedProcess, SeaweedFSServer, free_port
from service_runtime.settings import Settings
from service_runtime.transport.graph_codec import graph_to_proto

ROOT = Path(__file__).resolve().parents[1]
# The deployment secret the bench gives its executor process (so it knows the internal credential).
BENCH_SECRET = secrets.token_urlsafe(32)
CHUNK = 8 << 20
MODEL = "embeddings/bench.safetensors"  # a folder without a module loader: loaded as a state dict
WARM_NAME = "bench-warm.safetensors"

TXT2IMG: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bench"}},
}


def rate(nbytes: int, seconds: float) -> str:
    return f"{seconds:7.3f} s  {nbytes / seconds / 1e9:6.2f} GB/s" if seconds > 0 else "      -"


def drop_from_page_cache(path: Path) -> bool:
    """Asks the kernel to forget the file's cached pages (clean pages only: the file must be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False
    return True


def raw_read(path: Path) -> float:
    """Reads the file through one reused 8 MiB buffer: the medium's rate (no memory to allocate)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(view):
            pass
    return time.perf_counter() - started


def raw_read_whole(path: Path) -> float:
    """Reads the file into one fresh buffer of its size: what "the file fully in memory" costs at the least
    (the fresh memory's first touch included)."""
    started = time.perf_counter()
    data = path.read_bytes()
    elapsed = time.perf_counter() - started
    del data
    return elapsed


def best(samples: Iterator[float] | list[float]) -> float:
    return min(samples)


def generate(path: Path, size_mb: int) -> int:
    """A safetensors file of random fp16 tensors of 64 MiB each (the last one smaller)."""
    remaining = size_mb << 20
    tensors: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(0)
    index = 0
    while remaining > 0:
        nbytes = min(64 << 20, remaining)
        tensors[f"block.{index}.weight"] = torch.randn(nbytes // 2, generator=generator, dtype=torch.float16)
        remaining -= nbytes
        index += 1
    save_file(tensors, str(path), metadata={"format": "pt", "comfymesh.bench": "executor"})
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return path.stat().st_size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def memcpy_seconds(nbytes: int) -> float:
    source = torch.empty(nbytes, dtype=torch.uint8).random_()
    target = torch.empty_like(source)
    target.copy_(source)  # first touch of the pages
    return best(_timed(lambda: target.copy_(source)) for _ in range(3))


def host_to_device_seconds(nbytes: int) -> float | None:
    if not torch.cuda.is_available():
        return None
    source = torch.empty(nbytes, dtype=torch.uint8).random_()
    target = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    target.copy_(source)
    torch.cuda.synchronize()

    def copy() -> None:
        target.copy_(source)
        torch.cuda.synchronize()

    return best(_timed(copy) for _ in range(3))


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def raw_write(source: Path, target: Path) -> float:
    """Copies the file (read from the page cache) to a new file and fsyncs it: what the disk takes, durably."""
    data = source.read_bytes()
    view = memoryview(data)
    started = time.perf_counter()
    with open(target, "wb", buffering=0) as handle:
        for offset in range(0, len(data), CHUNK):
            handle.write(view[offset:offset + CHUNK])
        os.fsync(handle.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def raw_s3_get(client: Any, bucket: str, key: str) -> float:
    started = time.perf_counter()
    response = client.get_object(bucket, key)
    try:
        for _chunk in response.stream(1 << 20):
            pass
    finally:
        response.close()
        response.release_conn()
    return time.perf_counter() - started


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pid(server_pid: int) -> int | None:
    """The worker is the server's child running multiprocessing's spawn entry point (not its resource tracker)."""
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
        for child in children:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in command:
                return int(child)
    return None


class Executor:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        environment = {**os.environ, **env, "COMFYMESH_HOME": str(home), "COMFYMESH_EXECUTOR_PORT": str(self.port),
                       "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_EXECUTOR_REGISTER": "false",
                       "COMFYMESH_SECRET_KEY": BENCH_SECRET}
        self.process = ManagedProcess([sys.executable, "-m", "gpu_executor", "serve"],
                                      log_path=home / "executor.log", env=environment, cwd=ROOT, name="executor")
        # Short reconnect backoff: the start → ready figure must measure the server, not gRPC's 1 s backoff after
        # a connection the not-yet-listening server refused.
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.initial_reconnect_backoff_ms", 10),
                                                                    ("grpc.min_reconnect_backoff_ms", 10),
                                                                    ("grpc.max_reconnect_backoff_ms", 50)])
        self.stub = executor_service_pb2_grpc.GpuExecutorServiceStub(self.channel)
        # Only the platform's internal credential reaches an executor: the one of the secret the process was given.
        self.metadata = (("authorization", f"Bearer {internal_credential(Settings(secret_key=BENCH_SECRET))}"),)

    def start(self) -> tuple[float, float]:
        """Starts the process; returns (seconds until Describe answers, seconds until it is IDLE)."""
        started = time.perf_counter()
        self.process.start()
        answered = None
        while True:
            try:
                state = self.stub.Describe(pb.DescribeRequest(), timeout=1, metadata=self.metadata).state
            except grpc.RpcError:
                if not self.process.is_running:
                    raise RuntimeError(f"the executor exited:\n{self.process.log_tail()}") from None
                time.sleep(0.01)
                continue
            answered = answered or time.perf_counter() - started
            if state == pb.EXECUTOR_STATE_IDLE:
                return answered, time.perf_counter() - started
            time.sleep(0.02)

    def tier(self, tier: pb.CacheTier.ValueType) -> pb.CacheTierStats:
        stats = self.stub.Describe(pb.DescribeRequest(), timeout=30, metadata=self.metadata).cache_stats
        return next((s for s in stats if s.tier == tier), pb.CacheTierStats(tier=tier))

    def prefetch(self, name: str, tier: pb.CacheTier.ValueType,
                 stats_tier: pb.CacheTier.ValueType) -> tuple[float, int, float]:
        """(worker load seconds, bytes loaded, RPC seconds) of one PrefetchModels, from the tier's stats."""
        before = self.tier(stats_tier)
        started = time.perf_counter()
        self.stub.PrefetchModels(pb.PrefetchModelsRequest(model_names=[name], tier=tier), timeout=600,
                                   metadata=self.metadata)
        rpc = time.perf_counter() - started
        after = self.tier(stats_tier)
        return after.load_seconds - before.load_seconds, after.bytes_loaded - before.bytes_loaded, rpc

    def run(self, seed: int) -> float:
        graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in TXT2IMG.items()}
        graph["3"]["inputs"]["seed"] = seed
        request = pb.ExecuteRequest(execution_id=f"bench-{seed}", attempt=1, graph=graph_to_proto(graph),
                                    output_prefix=f"bench/{seed}")
        started = time.perf_counter()
        events = list(self.stub.Execute(request, timeout=600, metadata=self.metadata))
        elapsed = time.perf_counter() - started
        kind = events[-1].WhichOneof("kind")
        if kind != "succeeded":
            raise RuntimeError(f"the job ended {kind}: {events[-1]}")
        return elapsed

    def stop(self) -> int | None:
        self.channel.close()
        return self.process.stop(grace=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated model file (MiB)")
    parser.add_argument("--quick", action="store_true", help="a 128 MiB file (a quick check, not the figure)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    size_mb = 128 if args.quick else args.size_mb
    workdir = Path(tempfile.mkdtemp(prefix="bench-executor-", dir=os.environ.get("COMFYMESH_BENCH_DIR")))
    print(f"executor benchmark: {size_mb} MiB safetensors file, device "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {os.cpu_count()} CPUs, in {workdir}")

    seaweed = SeaweedFSServer(workdir / "seaweedfs", access_key=f"AK{secrets.token_hex(8).upper()}",
                              secret_key=secrets.token_urlsafe(24)).start()
    executor: Executor | None = None
    try:
        source = workdir / "bench.safetensors"
        started = time.perf_counter()
        size = generate(source, size_mb)
        digest = sha256_of(source)
        print(f"  generated {size / 1e9:.2f} GB in {time.perf_counter() - started:.1f} s")
        prefix = "bench"
        client = seaweed.client(timeout=600)
        client.make_bucket(f"{prefix}-models")
        client.fput_object(f"{prefix}-models", MODEL, str(source), metadata={"sha256": digest})

        models = workdir / "models"
        (models / "checkpoints").mkdir(parents=True)
        (models / "embeddings").mkdir()
        (models / "checkpoints" / "tiny.safetensors").symlink_to(make_tiny_sd1_checkpoint(seed=0))
        home = workdir / "home"
        executor = Executor(home, {"COMFYMESH_S3_ENDPOINT": seaweed.endpoint,
                                   "COMFYMESH_S3_ACCESS_KEY": seaweed.access_key,
                                   "COMFYMESH_S3_SECRET_KEY": seaweed.secret_key,
                                   "COMFYMESH_S3_BUCKET_PREFIX": prefix, "COMFYMESH_MODELS_DIR": str(models),
                                   "COMFYMESH_LOG_LEVEL": "WARNING"})
        ready, idle = executor.start()
        assert executor.process.pid is not None
        server_idle = rss_kb(executor.process.pid)
        worker = worker_pid(executor.process.pid)
        worker_idle = rss_kb(worker) if worker else 0

        # The job first: cold is the worker's first model use (loaders imported, checkpoint read from disk).
        cold_job = executor.run(seed=1)
        warm_jobs = [executor.run(seed=seed) for seed in (2, 3, 4, 5, 6)]

        # Each tier load next to the raw rate of its medium, measured just before it (same conditions: this
        # machine's other load changes over minutes).
        # object store → disk
        s3_raw = best([raw_s3_get(client, f"{prefix}-models", MODEL) for _ in range(3)])
        fetch_s, fetch_bytes, fetch_rpc = executor.prefetch(MODEL, pb.CACHE_TIER_DISK, pb.CACHE_TIER_OBJECT_STORE)
        disk_write = raw_write(source, workdir / "write-test.bin")
        cached = home / "model-cache" / digest[:2] / digest
        # disk → RAM, cold (the files dropped from the page cache) and warm (a second name of the cached file)
        disk_cold = raw_read(source) if drop_from_page_cache(source) else None
        whole_cold = raw_read_whole(source) if drop_from_page_cache(source) else None
        cold_dropped = drop_from_page_cache(cached)
        ram_cold_s, ram_cold_bytes, ram_cold_rpc = executor.prefetch(MODEL, pb.CACHE_TIER_RAM, pb.CACHE_TIER_RAM)
        disk_warm = best([raw_read(source) for _ in range(2)])
        whole_warm = best([raw_read_whole(source) for _ in range(2)])
        os.link(cached, models / "embeddings" / WARM_NAME)
        ram_warm_s, ram_warm_bytes, _ = executor.prefetch(f"embeddings/{WARM_NAME}", pb.CACHE_TIER_RAM,
                                                          pb.CACHE_TIER_RAM)
        memcpy = memcpy_seconds(size)
        h2d = host_to_device_seconds(size)
        device = executor.stub.Describe(pb.DescribeRequest(), timeout=30, metadata=executor.metadata).device
        gpu = None
        if device.kind == "cuda":
            gpu = executor.prefetch(MODEL, pb.CACHE_TIER_GPU, pb.CACHE_TIER_GPU)

        server_after = rss_kb(executor.process.pid)
        worker_after = rss_kb(worker) if worker else 0
    finally:
        code = executor.stop() if executor is not None else None
        seaweed.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    print(f"  process start → Describe answers        {ready:7.2f} s   (target ≤ 2 s; ComfyUI ~9 s)")
    print(f"  process start → IDLE (worker up)        {idle:7.2f} s")
    print(f"  model load, {size / 1e9:.2f} GB:")
    print(f"    object store → disk (worker)          {rate(fetch_bytes, fetch_s)}   (RPC {fetch_rpc:.3f} s)")
    print(f"      raw S3 GET, minio, bytes dropped     {rate(size, s3_raw)}")
    print(f"      raw disk write + fsync               {rate(size, disk_write)}")
    cold_note = "" if cold_dropped else "   (page cache NOT dropped)"
    print(f"    disk → RAM, cold (worker)             {rate(ram_cold_bytes, ram_cold_s)}   (RPC {ram_cold_rpc:.3f} s)"
          f"{cold_note}")
    print(f"      raw read of the file, cold           {rate(size, disk_cold) if disk_cold else 'not measured'}")
    print(f"      raw read into one new buffer, cold   {rate(size, whole_cold) if whole_cold else 'not measured'}")
    print(f"    disk → RAM, warm page cache (worker)  {rate(ram_warm_bytes, ram_warm_s)}")
    print(f"      raw read of the file, warm           {rate(size, disk_warm)}")
    print(f"      raw read into one new buffer, warm   {rate(size, whole_warm)}")
    if gpu is not None:
        print(f"    RAM → device (worker)                 {rate(gpu[1], gpu[0])}")
        print(f"      raw host → device copy               {rate(size, h2d or 0)}")
    else:
        print("    RAM → device                          not measured (no GPU: the CPU computes on the RAM copy)")
    print(f"      memcpy of the same bytes             {rate(size, memcpy)}")
    print("  tiny txt2img job (64 px, 4 steps, tiny SD1 checkpoint):")
    print(f"    cold (first job: model loaders imported, checkpoint loaded)  {cold_job:7.2f} s")
    print(f"    warm (model in RAM; median of {len(warm_jobs)})                     "
          f"{statistics.median(warm_jobs):7.2f} s")
    print(f"  idle RSS: server {server_idle / 1024:6.0f} MB, worker {worker_idle / 1024:6.0f} MB   "
          f"(target: server ≤ 300 MB; ComfyUI ~670 MB)")
    print(f"  RSS after the jobs: server {server_after / 1024:6.0f} MB, worker {worker_after / 1024:6.0f} MB "
          f"(the worker holds the {size / 1e9:.2f} GB file twice and the checkpoint)")
    print(f"  executor exit status {code}")


if __name__ == "__main__":
    main()
