"""Engine overhead: per-node cost on a 1,000-node chain of cheap nodes, a fully cached re-run, and peak RSS.

    .venv/bin/python -m bench.engine [--nodes 1000] [--repeat 5]

The reference point (issue 3): a 3-node trivial graph takes ComfyUI about 4 ms end to end when fully cached on
this 2-core machine (that figure includes its HTTP and websocket round trips; ours is the engine alone, which is
what the executor adds on top of the gRPC call). Every figure printed here is measured in this run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_executor.engine.engine import Engine, ExecutionRequest
from gpu_executor.engine.events import Event, Succeeded
from gpu_executor.engine.registry import NodeRegistry


class Const:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1})}}

    def run(self, value: int) -> tuple[int]:
        return (value,)


class Inc:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"x": ("INT", {}), "step": ("INT", {"default": 1, "min": 0, "max": 10})}}

    def run(self, x: int, step: int) -> tuple[int]:
        return (x + step,)


class Sink:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"x": ("INT", {})}}

    def run(self, x: int) -> dict[str, Any]:
        return {"ui": {"value": [x]}}


class NullSink:
    def emit(self, event: Event) -> None:
        pass


def chain(length: int, seed: int = 0) -> dict[str, Any]:
    graph: dict[str, Any] = {"0": {"class_type": "Const", "inputs": {"value": seed}}}
    for index in range(1, length - 1):
        graph[str(index)] = {"class_type": "Inc", "inputs": {"x": [str(index - 1), 0], "step": 1}}
    graph[str(length - 1)] = {"class_type": "Sink", "inputs": {"x": [str(length - 2), 0]}}
    return graph


def timed(engine: Engine, prompt: dict[str, Any], workdir: Path) -> float:
    request = ExecutionRequest("bench", prompt, workdir, workdir, workdir)
    started = time.perf_counter()
    final = engine.execute(request, NullSink())
    elapsed = time.perf_counter() - started
    assert isinstance(final, Succeeded), final
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    registry = NodeRegistry()
    registry.add_mappings("bench", {"Const": Const, "Inc": Inc, "Sink": Sink})
    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))

    cold, cached, validation = [], [], []
    for run in range(args.repeat):
        engine = Engine(registry)  # a fresh cache: every node runs
        prompt = chain(args.nodes, seed=run)
        started = time.perf_counter()
        engine.validate(prompt)
        validation.append(time.perf_counter() - started)
        cold.append(timed(engine, prompt, workdir))
        cached.append(timed(engine, prompt, workdir))

    small = Engine(registry)
    tiny = chain(3)
    timed(small, tiny, workdir)
    tiny_cached = [timed(small, tiny, workdir) for _ in range(200)]
    tiny_engine = Engine(registry)
    tiny_cold = []
    for seed in range(200):
        tiny_cold.append(timed(tiny_engine, chain(3, seed=seed), workdir))

    median = statistics.median
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"engine benchmark ({args.nodes}-node chain, median of {args.repeat} runs)")
    print(f"  validation of the chain            {median(validation) * 1e3:9.2f} ms")
    print(f"  full run, nothing cached           {median(cold) * 1e3:9.2f} ms"
          f"   = {median(cold) / args.nodes * 1e6:7.1f} us per node (validation included)")
    print(f"  re-run, fully cached               {median(cached) * 1e3:9.2f} ms")
    print(f"  3-node graph, fully cached         {median(tiny_cached) * 1e3:9.3f} ms   (ComfyUI: ~4 ms end to end)")
    print(f"  3-node graph, new seed (all run)   {median(tiny_cold) * 1e3:9.3f} ms")
    print(f"  peak RSS                           {peak_rss_mb:9.1f} MB")


if __name__ == "__main__":
    main()
