"""Which executor gets a job: capability filters, then the seeds' §9.2 multi-factor score.

Filters: the executor accepts work (not draining), offers every node class the graph uses, and has at least the
estimated device memory. Score (higher is better), weights from the seeds:
- memory availability 0.4: free device memory as a share of the total (or of the estimate, capped at 1);
- cache 0.3: the graph's models already held, weighted by tier (GPU 1.0, RAM 0.7, local disk 0.4, object store 0);
- load 0.2: 1 - utilisation;
- execution-time fit 0.1: a GPU beats a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.execution.registry import ExecutorEntry

WEIGHTS = {"memory": 0.4, "cache": 0.3, "load": 0.2, "speed": 0.1}
TIER_VALUE = {"GPU": 1.0, "RAM": 0.7, "DISK": 0.4, "OBJECT_STORE": 0.0}


@dataclass(frozen=True)
class JobNeeds:
    node_classes: frozenset[str]
    model_names: tuple[str, ...]
    vram_estimate_bytes: int = 0


def capable(entry: ExecutorEntry, needs: JobNeeds) -> bool:
    if not entry.accepting or not needs.node_classes <= entry.node_classes:
        return False
    return needs.vram_estimate_bytes <= 0 or entry.memory_total_bytes >= needs.vram_estimate_bytes


def score(entry: ExecutorEntry, needs: JobNeeds) -> float:
    if entry.memory_total_bytes > 0:
        denominator = needs.vram_estimate_bytes or entry.memory_total_bytes
        memory = min(1.0, entry.memory_free_bytes / denominator)
    else:
        memory = 0.0
    if needs.model_names:
        cache = sum(TIER_VALUE.get(entry.cached_models.get(m, ""), 0.0) for m in needs.model_names)
        cache /= len(needs.model_names)
    else:
        cache = 1.0
    load = 1.0 - min(100.0, max(0.0, entry.utilization_percent)) / 100.0
    speed = 1.0 if entry.device_kind == "cuda" else 0.5
    return (WEIGHTS["memory"] * memory + WEIGHTS["cache"] * cache + WEIGHTS["load"] * load
            + WEIGHTS["speed"] * speed)


def rank(candidates: Iterable[ExecutorEntry], needs: JobNeeds, *, avoid: Sequence[str] = ()) -> list[ExecutorEntry]:
    """Capable executors, best first; executors in `avoid` (where an earlier attempt failed) come last."""
    able = [e for e in candidates if capable(e, needs)]
    return sorted(able, key=lambda e: (e.executor_id in avoid, -score(e, needs), e.executor_id))
