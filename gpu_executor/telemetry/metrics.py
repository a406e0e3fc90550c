"""The executor's Prometheus metrics, exported by the server process (the worker reports to it over its pipe).

- `model_load_time_seconds{tier}`, `cache_hit_rate{tier}`, `model_cache_bytes{tier}` (model_tiers/metrics.py):
  updated from every cache state the worker sends.
- `gpu_utilization_percent{device,index}`: NVML's utilisation of each GPU, read at scrape time (no sample on a
  CPU-only executor: there is no GPU to be utilised).
- `memory_usage_bytes{component,device}`: resident memory of the server and of the worker process, and memory in
  use on each device (device memory from NVML; host memory for the CPU), read at scrape time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpu_executor.model_tiers.metrics import model_tier_metrics
from gpu_executor.model_tiers.state import CacheState, CacheView
from gpu_executor.telemetry.gpu import describe_devices

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default); 0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid or 'self'}/statm").read_text().split()
        return int(fields[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class ExecutorCollector(Collector):
    def __init__(self, worker_pid: Callable[[], int | None]) -> None:
        self._worker_pid = worker_pid

    def collect(self) -> Iterator[Metric]:
        utilization = GaugeMetricFamily("gpu_utilization_percent", "GPU busy time over NVML's last sample "
                                        "period, 0..100.", labels=["device", "index"])
        memory = GaugeMetricFamily("memory_usage_bytes", "Memory in use: resident memory of the executor's server "
                                   "and worker processes, and memory used on each device.",
                                   labels=["component", "device"])
        memory.add_metric(["server", ""], rss_bytes())
        worker = self._worker_pid()
        memory.add_metric(["worker", ""], rss_bytes(worker) if worker else 0)
        for device in describe_devices():
            label = f"{device.kind}:{device.index}"
            memory.add_metric(["device", label], max(0, device.memory_total_bytes - device.memory_free_bytes))
            if device.kind == "cuda":
                utilization.add_metric([device.name, str(device.index)], float(device.utilization_percent or 0))
        yield utilization
        yield memory


_registered: ExecutorCollector | None = None
_lock = threading.Lock()


def register_executor_collector(worker_pid: Callable[[], int | None]) -> None:
    """Once per process (Prometheus refuses a second registration of the same names)."""
    global _registered
    with _lock:
        if _registered is None:
            _registered = ExecutorCollector(worker_pid)
            REGISTRY.register(_registered)
        else:
            _registered._worker_pid = worker_pid


def export_cache_state(view: CacheView, state: CacheState) -> None:
    """Takes a worker's cache report into the view and the model tier metrics."""
    view.update(state)
    metrics = model_tier_metrics()
    for tier, seconds in state.loads:
        metrics.load_time.labels(tier).observe(seconds)
    for stats in view.stats():
        metrics.hit_rate.labels(stats.tier).set(stats.hit_rate)
        metrics.cache_bytes.labels(stats.tier).set(stats.bytes_used)
