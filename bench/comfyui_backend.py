"""What ComfyMesh adds on top of ComfyUI itself (live only: needs a ComfyUI checkout).

    COMFYUI_PATH=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/python] .venv/bin/python -m bench.comfyui_backend [--runs 50]

It starts its own SeaweedFS, a ComfyUI from COMFYUI_PATH (as the executor would: private port, own directories)
and an executor attached to that ComfyUI (COMFYMESH_COMFYUI_URL). Then, alternately, the same small graph
(EmptyImage → ImageInvert → SaveImage, a new colour every run so nothing is cached) runs

- straight on ComfyUI: POST /prompt → its `execution_success` frame on the websocket (ComfyUI's own time);
- through the executor alone: Execute → the terminal event (upload to the object store included);
- end to end through the platform: a whole ComfyMesh (`LocalPlatform`: control plane, queue, Envoy, SQLite,
  Valkey) whose one executor is attached to the same ComfyUI; SubmitExecution through the gateway → the client
  sees the terminal event on WatchExecution (the Python SDK).

It prints p50/p99 of each and the differences: what the executor adds, and what the whole platform adds. Every
figure is measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from comfymesh.client import ComfyMesh, Succeeded
from comfymesh.executor.v1 import executor_service_pb2 as pb
from comfymesh.executor.v1 import executor_service_pb2_grpc
from gpu_executor.comfyui.client import ComfyClient
from gpu_executor.comfyui.frames import Message, decode_text
from gpu_executor.comfyui.process import ComfyLayout, ComfyProcess
from launcher.platform import LocalPlatform
from service_runtime.auth.credentials import internal_credential
from service_runtime.processes import ManagedProcess, SeaweedFSServer, free_port
from service_runtime.settings import Settings
from service_runtime.transport.graph_codec import graph_to_proto

ROOT = Path(__file__).resolve().parents[1]
BENCH_SECRET = secrets.token_urlsafe(32)


def graph(color: int) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                         "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}}}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def comfyui_alone(client: ComfyClient, session: aiohttp.ClientSession, color: int) -> float:
    """Seconds from POST /prompt to the prompt's execution_success frame."""
    client_id = uuid.uuid4().hex
    async with session.ws_connect(client.base_url + "/ws", params={"clientId": client_id}) as ws:
        await ws.receive()  # the greeting (status)
        prompt_id = str(uuid.uuid4())
        started = time.perf_counter()
        await client.post_prompt(graph(color), prompt_id, client_id)
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame: Message = decode_text(message.data)
            if frame.prompt_id == prompt_id and frame.type == "execution_success":
                return time.perf_counter() - started
            if frame.prompt_id == prompt_id and frame.type in ("execution_error", "execution_interrupted"):
                raise RuntimeError(f"ComfyUI ended the bench graph with {frame.type}: {frame.data}")
    raise RuntimeError("ComfyUI closed the websocket")


def through_executor(stub: executor_service_pb2_grpc.GpuExecutorServiceStub, metadata: Any, color: int) -> float:
    """Seconds from Execute to its terminal event."""
    execution_id = f"bench-{color}"
    request = pb.ExecuteRequest(execution_id=execution_id, attempt=1, graph=graph_to_proto(graph(color)),
                                output_prefix=f"bench/{execution_id}")
    started = time.perf_counter()
    events = list(stub.Execute(request, timeout=300, metadata=metadata))
    elapsed = time.perf_counter() - started
    if events[-1].WhichOneof("kind") != "succeeded":
        raise RuntimeError(f"the executor ended the bench graph with: {events[-1]}")
    return elapsed


def through_platform(mesh: ComfyMesh, color: int) -> float:
    """Seconds from SubmitExecution (through the gateway) to the client seeing the terminal event."""
    started = time.perf_counter()
    execution = mesh.submit(graph(color))
    events = list(mesh.watch(execution.id, timeout=300))
    elapsed = time.perf_counter() - started
    if not isinstance(events[-1], Succeeded):
        raise RuntimeError(f"the platform ended the bench graph with: {events[-1]}")
    return elapsed


def platform_on(comfyui_url: str, seaweed: SeaweedFSServer, workdir: Path) -> LocalPlatform:
    """The whole platform, its one executor attached to the ComfyUI at `comfyui_url`."""
    settings = Settings(home=workdir / "platform", s3_endpoint=seaweed.endpoint, s3_access_key=seaweed.access_key,
                        s3_secret_key=seaweed.secret_key, secret_key=BENCH_SECRET, log_level="WARNING")
    platform = LocalPlatform(settings, free_ports=True, executors=1, extra_env={
        "EXECUTOR_ENGINE": "comfyui", "COMFYUI_URL": comfyui_url})
    platform.start()
    return platform


def report(runs: int, checkout: Path, measured: dict[str, list[float]]) -> None:
    def line(name: str, p50: float, p99: float, extra: str = "") -> None:
        print(f"  {name:<50} p50 {p50 * 1e3:8.1f} ms  p99 {p99 * 1e3:8.1f} ms{extra}")

    print(f"ComfyUI backend overhead, {runs} runs of a 3-node graph (ComfyUI at {checkout})")
    for name, values in measured.items():
        line(name, percentile(values, 0.5), percentile(values, 0.99),
             f"  mean {statistics.fmean(values) * 1e3:8.1f} ms")
    alone, executor, platform = measured.values()
    for name, values in (("overhead of the executor", executor), ("overhead of the whole platform", platform)):
        line(name, percentile(values, 0.5) - percentile(alone, 0.5),
             percentile(values, 0.99) - percentile(alone, 0.99))


def wait_idle(stub: executor_service_pb2_grpc.GpuExecutorServiceStub, metadata: Any, process: ManagedProcess) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if stub.Describe(pb.DescribeRequest(), timeout=2, metadata=metadata).state == pb.EXECUTOR_STATE_IDLE:
                return
        except grpc.RpcError:
            if not process.is_running:
                raise RuntimeError(f"the executor exited:\n{process.log_tail()}") from None
        time.sleep(0.1)
    raise RuntimeError("the executor did not become idle within 300 s")


async def bench(checkout: Path, python: str, runs: int, workdir: Path) -> None:
    seaweed = SeaweedFSServer(workdir / "seaweedfs", access_key=f"AK{secrets.token_hex(8).upper()}",
                              secret_key=secrets.token_urlsafe(24)).start()
    layout = ComfyLayout(workdir / "comfyui")
    paths = workdir / "extra_model_paths.yaml"
    paths.write_text("{}\n")
    comfyui = ComfyProcess(checkout, python, layout, paths, (), 300.0)
    await comfyui.start()
    port = free_port()
    env = {**os.environ, "COMFYMESH_HOME": str(workdir / "executor"), "COMFYMESH_EXECUTOR_PORT": str(port),
           "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_EXECUTOR_REGISTER": "false", "COMFYMESH_SECRET_KEY": BENCH_SECRET,
           "COMFYMESH_EXECUTOR_ENGINE": "comfyui", "COMFYMESH_COMFYUI_URL": comfyui.base_url,
           "COMFYMESH_S3_ENDPOINT": seaweed.endpoint, "COMFYMESH_S3_ACCESS_KEY": seaweed.access_key,
           "COMFYMESH_S3_SECRET_KEY": seaweed.secret_key, "COMFYMESH_LOG_LEVEL": "WARNING"}
    executor = ManagedProcess([sys.executable, "-m", "gpu_executor", "serve"], log_path=workdir / "executor.log",
                              env=env, cwd=ROOT, name="executor").start()
    metadata = (("authorization", f"Bearer {internal_credential(Settings(secret_key=BENCH_SECRET))}"),)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = executor_service_pb2_grpc.GpuExecutorServiceStub(channel)
        wait_idle(stub, metadata, executor)
        alone: list[float] = []
        end_to_end: list[float] = []
        platform_runs: list[float] = []
        async with aiohttp.ClientSession() as session:
            client = ComfyClient(comfyui.base_url, session)
            for warm_up in range(2):  # first runs load ComfyUI's node code paths
                await comfyui_alone(client, session, 0x10000 + warm_up)
                through_executor(stub, metadata, 0x20000 + warm_up)
            for run in range(runs):
                alone.append(await comfyui_alone(client, session, 3 * run))
                end_to_end.append(through_executor(stub, metadata, 3 * run + 1))
            executor.stop(grace=30)  # the platform's own executor attaches to the same ComfyUI next
            platform = await asyncio.to_thread(platform_on, comfyui.base_url, seaweed, workdir)
            try:
                with ComfyMesh(platform.endpoints.gateway, platform.endpoints.admin_key) as mesh:
                    for warm_up in range(2):
                        await asyncio.to_thread(through_platform, mesh, 0x30000 + warm_up)
                    for run in range(runs):
                        platform_runs.append(await asyncio.to_thread(through_platform, mesh, 3 * run + 2))
            finally:
                await asyncio.to_thread(platform.stop)
        report(runs, checkout, {"ComfyUI alone (POST → execution_success)": alone,
                                "through the executor (Execute → terminal)": end_to_end,
                                "through the platform (submit → terminal seen)": platform_runs})
    finally:
        channel.close()
        executor.stop(grace=30)
        await comfyui.stop()
        seaweed.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="measured runs of each kind")
    args = parser.parse_args()
    checkout = os.environ.get("COMFYUI_PATH")
    if not checkout or not (Path(checkout) / "main.py").is_file():
        sys.exit("bench.comfyui_backend measures a real ComfyUI: set COMFYUI_PATH to a ComfyUI checkout (the "
                 "directory holding main.py), and COMFYUI_PYTHON to its interpreter if it has its own.")
    workdir = Path(tempfile.mkdtemp(prefix="bench-comfyui-"))
    asyncio.run(bench(Path(checkout).resolve(), os.environ.get("COMFYUI_PYTHON", sys.executable), args.runs, workdir))


if __name__ == "__main__":
    main()
