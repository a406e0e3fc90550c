"""Control-plane overhead and throughput on the real platform (PostgreSQL, Valkey, SeaweedFS, CPU executors).

    .venv/bin/python -m bench.control_plane [--runs 200] [--throughput 300] [--watchers 1000]

It starts its own platform (its own Valkey and SeaweedFS; PostgreSQL from COMFYMESH_BENCH_DATABASE_URL or the
local server's `test` database in a fresh database; SQLite with --sqlite), talks gRPC straight to the control plane,
and prints, for a trivial image graph (EmptyImage 8x8 → ImageInvert → SaveImage):

- submit accepted → executor started (the executor's `started` event time − the time the submit reply arrived),
- executor done → client sees the terminal event (receive time − the executor's terminal event time),
- end to end (submit sent → terminal event received) next to the executor's own run time (started → done),
- submissions accepted per second (queue paused, so executors do not compete for the two cores),
- sustained executions per second with 1 and then 2 executors,
- concurrent WatchExecution streams held on one execution and their event latency (p50/p99),
- idle CPU of the control plane and of an executor (share of one core over 10 s).

References (issue 6, this machine): ComfyUI 7.7 ms median POST /prompt → execution_success for this graph and
100-150 prompts/s with no durability; tuned job queues start a no-op task 2.2-2.9 ms (p50) after the enqueue.
Targets: ≤ 2.5 ms p50 / ≤ 5 ms p99 submit → start, ≥ 1,000 submissions/s, end to end under 7.7 ms, idle ≤ 1 %.
All clocks are this machine's; every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc.aio

from comfymesh.queue.v1 import queue_service_pb2 as qpb
from comfymesh.queue.v1 import queue_service_pb2_grpc as qgrpc
from comfymesh.workflow.v1 import workflow_service_pb2 as wpb
from comfymesh.workflow.v1 import workflow_service_pb2_grpc as wgrpc
from launcher.platform import LocalPlatform, fleet_size
from service_runtime.auth.client import bearer_client_interceptors
from service_runtime.processes import SeaweedFSServer, free_port
from service_runtime.settings import Settings
from service_runtime.transport.graph_codec import graph_to_proto

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
}
SLOW_PACK = '''
import time
from gpu_executor.engine import runtime

class Ticker:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "go"
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "ticks": ("INT", {"default": 100, "min": 1, "max": 100000})}}
    def go(self, image, ticks):
        bar = runtime.ProgressBar(ticks)
        for _ in range(ticks):
            runtime.check_interrupted()
            time.sleep(0.05)
            bar.update(1)
        return (image,)

NODE_CLASS_MAPPINGS = {"Ticker": Ticker}
'''


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1e3:7.2f} ms   p99 {pct(values, 99) * 1e3:7.2f} ms   (n={len(values)})"


def stamp(message: Any) -> float:
    return float(message.ToNanoseconds()) / 1e9


async def one_run(workflow: wgrpc.WorkflowServiceAsyncStub, graph: Any) -> dict[str, float]:
    sent = time.time()
    execution = await workflow.SubmitExecution(wpb.SubmitExecutionRequest(graph=graph))
    accepted = time.time()
    times: dict[str, float] = {"sent": sent, "accepted": accepted}
    async for event in workflow.WatchExecution(wpb.WatchExecutionRequest(id=execution.id)):
        kind = event.WhichOneof("kind")
        if kind == "started":
            times["started"] = stamp(event.event_time)
        elif kind in ("succeeded", "failed", "cancelled"):
            times["seen"] = time.time()
            times["done"] = stamp(event.event_time)
            if kind != "succeeded":
                raise RuntimeError(f"execution {execution.id} ended {kind}: {event}")
            break
    return times


async def latency(workflow: wgrpc.WorkflowServiceAsyncStub, runs: int) -> None:
    graph = graph_to_proto(GRAPH)
    for _ in range(5):  # warm the caches, connections and the executor's worker
        await one_run(workflow, graph)
    results = [await one_run(workflow, graph) for _ in range(runs)]
    print("latency, one execution at a time (1 executor):")
    print(f"  submit call (validate + durable write + enqueue)  {ms([r['accepted'] - r['sent'] for r in results])}")
    print(f"  submit accepted → executor started                {ms([r['started'] - r['accepted'] for r in results])}")
    print(f"  executor done → client sees terminal event        {ms([r['seen'] - r['done'] for r in results])}")
    print(f"  end to end (submit sent → terminal seen)          {ms([r['seen'] - r['sent'] for r in results])}")
    print(f"  executor's own run time (started → done)          {ms([r['done'] - r['started'] for r in results])}")


async def submit_many(workflow: wgrpc.WorkflowServiceAsyncStub, count: int, concurrency: int = 64) -> list[str]:
    graph = graph_to_proto(GRAPH)
    ids: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def submit() -> None:
        async with semaphore:
            ids.append((await workflow.SubmitExecution(wpb.SubmitExecutionRequest(graph=graph))).id)

    await asyncio.gather(*(submit() for _ in range(count)))
    return ids


async def wait_all(workflow: wgrpc.WorkflowServiceAsyncStub, ids: list[str]) -> None:
    async def wait(execution_id: str) -> None:
        async for event in workflow.WatchExecution(wpb.WatchExecutionRequest(id=execution_id)):
            if event.WhichOneof("kind") in ("succeeded", "failed", "cancelled"):
                return

    await asyncio.gather(*(wait(i) for i in ids))


async def throughput(workflow: wgrpc.WorkflowServiceAsyncStub, queue: qgrpc.QueueServiceAsyncStub, count: int,
                     executors: int) -> None:
    await queue.PauseQueue(qpb.PauseQueueRequest())
    started = time.perf_counter()
    ids = await submit_many(workflow, count)
    accept_seconds = time.perf_counter() - started
    watchers = asyncio.create_task(wait_all(workflow, ids))
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    await queue.ResumeQueue(qpb.ResumeQueueRequest())
    await watchers
    run_seconds = time.perf_counter() - started
    print(f"throughput with {executors} executor(s), {count} executions:")
    print(f"  submissions accepted (queue paused, 64 in flight)  {count / accept_seconds:8.1f} /s")
    print(f"  sustained executions (backlog drained)             {count / run_seconds:8.1f} /s")


async def watchers(workflow: wgrpc.WorkflowServiceAsyncStub, count: int) -> None:
    graph = dict(GRAPH)
    graph["4"] = {"class_type": "Ticker", "inputs": {"image": ["2", 0], "ticks": 60}}
    graph["3"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "bench"}}
    execution = await workflow.SubmitExecution(wpb.SubmitExecutionRequest(graph=graph_to_proto(graph)))
    lags: list[float] = []
    opened = 0
    all_open = asyncio.Event()

    async def watch() -> None:
        nonlocal opened
        call = workflow.WatchExecution(wpb.WatchExecutionRequest(id=execution.id))
        opened += 1
        if opened == count:
            all_open.set()
        async for event in call:
            kind = event.WhichOneof("kind")
            if kind == "node_progress":
                lags.append(time.time() - stamp(event.event_time))
            if kind in ("succeeded", "failed", "cancelled"):
                return

    tasks = [asyncio.create_task(watch()) for _ in range(count)]
    await asyncio.gather(*tasks)
    live = [lag for lag in lags if lag < 30]
    print(f"{count} concurrent WatchExecution streams on one execution (progress every 50 ms):")
    print(f"  events delivered {len(lags)}; event latency (executor event → watcher)  {ms(live)}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(platform: LocalPlatform, seconds: float = 10.0) -> None:
    pids = {name: process.pid for name, process in platform.processes.items() if process.pid}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    print(f"idle CPU over {seconds:g} s (share of one core):")
    for name, pid in pids.items():
        print(f"  {name:<16} {100 * (cpu_seconds(pid) - before[name]) / seconds:6.2f} %")


async def measure(platform: LocalPlatform, args: argparse.Namespace) -> None:
    options = [("grpc.max_concurrent_streams", 0)]
    # As a user calls it: with the admin API key the platform created on its first start.
    async with grpc.aio.insecure_channel(platform.endpoints.control_plane, options=options,
                                         interceptors=bearer_client_interceptors(platform.endpoints.admin_key,
                                                                                 lambda: "")) as channel:
        workflow = wgrpc.WorkflowServiceStub(channel)
        queue = qgrpc.QueueServiceStub(channel)
        await latency(workflow, args.runs)
        await throughput(workflow, queue, args.throughput, 1)
        await watchers(workflow, args.watchers)
        await asyncio.to_thread(idle_cpu, platform)
        port = free_port()
        platform.start_executor(2, port, 0)
        await asyncio.to_thread(platform.processes["control_plane"].wait_ready,
                                lambda: fleet_size(platform.endpoints.control_plane, platform.settings) >= 2, 60)
        await throughput(workflow, queue, args.throughput, 2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--throughput", type=int, default=300)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        home = Path(tmp)
        pack = home / "custom_nodes"
        pack.mkdir()
        (pack / "ticker.py").write_text(SLOW_PACK)
        database_url = "" if args.sqlite else os.environ.get("COMFYMESH_BENCH_DATABASE_URL") or fresh_postgres()
        secret = "bench-" + os.urandom(8).hex()
        seaweed = SeaweedFSServer(home / "seaweedfs", "bench", secret, log_path=home / "seaweedfs.log")
        seaweed.start(timeout=60)
        settings = Settings(home=home, database_url=database_url, redis_url="", s3_endpoint=seaweed.endpoint,
                            s3_access_key="bench", s3_secret_key=secret, environment="test",
                            log_level="WARNING", metrics_port=0)
        platform = LocalPlatform(settings, free_ports=True, extra_env={
            "CUSTOM_NODES_DIRS": str(pack), "QUEUE_MAX_SIZE": "100000", "LOG_LEVEL": "WARNING"})
        try:
            platform.start()
            print(f"platform up: database {'SQLite' if args.sqlite else 'PostgreSQL'}, Valkey, SeaweedFS, "
                  f"control plane in one process, CPU executor(s); {os.cpu_count()} cores")
            asyncio.run(measure(platform, args))
        finally:
            platform.stop()
            seaweed.stop()


def fresh_postgres() -> str:
    """A new database on the local PostgreSQL (trust auth, as on the development machines)."""
    import secrets

    import asyncpg  # type: ignore[import-untyped]

    name = f"comfymesh_bench_{secrets.token_hex(4)}"

    async def create() -> None:
        connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test", timeout=5)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


if __name__ == "__main__":
    main()
