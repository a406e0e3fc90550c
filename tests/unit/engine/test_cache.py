"""The output cache: reuse across executions, invalidation, IS_CHANGED, bounds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpu_executor.engine.cache import OutputCache
from gpu_executor.engine.engine import Engine
from gpu_executor.engine.events import CollectingSink, NodeExecuted, NodesCached, NodeStarted, Succeeded
from gpu_executor.engine.registry import NodeRegistry
from tests.unit.engine.conftest import request
from tests.unit.engine.test_execution import chain

pytestmark = pytest.mark.unit


def test_fully_cached_rerun_runs_only_the_output_node(engine: Engine, tmp_path: Path, calls: dict[str, int]) -> None:
    """Output nodes always run (each execution writes its own files); everything they need comes from the cache."""
    engine.execute(request(tmp_path, chain()), CollectingSink())
    calls.clear()
    sink = CollectingSink()
    final = engine.execute(request(tmp_path, chain()), sink)
    assert isinstance(final, Succeeded) and calls == {"Show": 1}
    assert sink.of(NodesCached)[0].node_ids == ("3",)  # nothing upstream of a cached node is needed
    assert [(e.node_id, e.cached) for e in sink.of(NodeExecuted)] == [("4", False)]
    assert final.ui["4"] == {"values": [9.0], "node": ["4"]}
    assert [(t.node_id, t.cached) for t in final.timings] == [("3", True), ("4", False)]


def test_a_changed_literal_reruns_only_it_and_what_follows(engine: Engine, tmp_path: Path,
                                                           calls: dict[str, int]) -> None:
    engine.execute(request(tmp_path, chain()), CollectingSink())
    calls.clear()
    changed = chain()
    changed["2"]["inputs"]["b"] = 5  # the "seed" of this graph
    sink = CollectingSink()
    final = engine.execute(request(tmp_path, changed), sink)
    assert calls == {"Add": 1, "Scale": 1, "Show": 1}
    assert sink.of(NodesCached)[0].node_ids == ("1",)
    assert [e.node_id for e in sink.of(NodeStarted)] == ["2", "3", "4"]
    assert isinstance(final, Succeeded) and final.ui["4"]["values"] == [18.0]


def test_identical_subgraphs_under_other_ids_are_reused(engine: Engine, tmp_path: Path,
                                                        calls: dict[str, int]) -> None:
    engine.execute(request(tmp_path, chain()), CollectingSink())
    calls.clear()
    renamed = {f"n{k}": {**v, "inputs": {name: [f"n{val[0]}", val[1]] if isinstance(val, list) else val
                                         for name, val in v["inputs"].items()}} for k, v in chain().items()}
    engine.execute(request(tmp_path, renamed), CollectingSink())
    assert calls == {"Show": 1}


def test_is_changed_nan_always_runs(engine: Engine, tmp_path: Path, calls: dict[str, int]) -> None:
    prompt = {"1": {"class_type": "Volatile", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    for _ in range(2):
        engine.execute(request(tmp_path, prompt), CollectingSink())
    assert calls == {"Volatile": 2, "Show": 2}


def test_is_changed_token_controls_reuse(engine: Engine, registry: NodeRegistry, tmp_path: Path,
                                         calls: dict[str, int]) -> None:
    version = sys.modules[registry.specs["Versioned"].cls.__module__].VERSION
    prompt = {"1": {"class_type": "Versioned", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    version["token"] = "a"
    engine.execute(request(tmp_path, prompt), CollectingSink())
    engine.execute(request(tmp_path, prompt), CollectingSink())
    assert calls["Versioned"] == 1
    version["token"] = "b"
    engine.execute(request(tmp_path, prompt), CollectingSink())
    assert calls["Versioned"] == 2


def test_bounded_by_entries_and_bytes() -> None:
    cache = OutputCache(max_entries=2, max_bytes=10_000)
    for key in ("a", "b", "c"):
        cache.put(key, [[1]], None)
    assert len(cache) == 2 and "a" not in cache and cache.stats.evictions == 1
    cache.get("b")  # b is now the most recently used
    cache.put("big", [[b"x" * 6000]], None)
    assert "big" in cache and "b" in cache and "c" not in cache
    cache.put("bigger", [[b"x" * 6000]], None)
    assert "big" not in cache and cache.bytes_used <= 10_000
    cache.put("huge", [[b"x" * 20_000]], None)  # larger than the budget: not cached at all
    assert "huge" not in cache and "bigger" in cache


def test_cache_shared_across_engines_only_when_passed(registry: NodeRegistry, tmp_path: Path,
                                                      calls: dict[str, int]) -> None:
    shared = OutputCache()
    Engine(registry, shared).execute(request(tmp_path, chain()), CollectingSink())
    Engine(registry, shared).execute(request(tmp_path, chain()), CollectingSink())
    Engine(registry).execute(request(tmp_path, chain()), CollectingSink())
    assert (calls["Add"], calls["Show"]) == (2, 3)
