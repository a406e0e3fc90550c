"""The engine: validates a graph, then runs what its output nodes need, in dependency order, reusing cached
outputs, reporting events to a sink, and stopping at the next node boundary or progress step when interrupted.

List semantics are ComfyUI's: every output is a list of values; a node without INPUT_IS_LIST is called once per
index of its longest input list (shorter lists repeat their last value), and an output flagged in OUTPUT_IS_LIST
contributes its items rather than itself.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_executor.engine import runtime
from gpu_executor.engine.cache import UNCACHEABLE, OutputCache, node_key
from gpu_executor.engine.errors import ValidationResult
from gpu_executor.engine.events import (
    Cancelled,
    Event,
    EventSink,
    Failed,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    NodeStarted,
    NodeTiming,
    OutputRef,
    Preview,
    Started,
    Succeeded,
)
from gpu_executor.engine.graph import Graph, GraphNode, Link
from gpu_executor.engine.node_types import NodeSpec
from gpu_executor.engine.registry import NodeRegistry
from gpu_executor.engine.validation import sort_node_ids, validate

log = logging.getLogger(__name__)


@dataclass
class ExecutionRequest:
    execution_id: str
    prompt: Any  # API-format graph (plain JSON values)
    output_dir: Path
    temp_dir: Path
    input_dir: Path
    inputs: dict[str, Path] = field(default_factory=dict)  # input file name → local path
    extra_pnginfo: dict[str, Any] = field(default_factory=dict)
    allow_partial: bool = False  # run the valid output branches even if others are invalid (ComfyUI's behaviour)


class NodeFailure(Exception):  # noqa: N818
    def __init__(self, node: GraphNode, error: BaseException) -> None:
        super().__init__(str(error))
        self.node, self.error = node, error


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def _call_kwargs(function: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """Only the arguments a function accepts (IS_CHANGED often declares a subset of the inputs)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return dict(values)
    return {k: v for k, v in values.items() if k in parameters}


def _merge_ui(merged: dict[str, Any], ui: Mapping[str, Any]) -> None:
    for key, value in ui.items():
        if isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value


class Engine:
    """One per executor process: the catalog, and the output cache shared by every execution it runs."""

    def __init__(self, registry: NodeRegistry, cache: OutputCache | None = None) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else OutputCache()

    def validate(self, prompt: Any, input_names: tuple[str, ...] = ()) -> tuple[Graph, ValidationResult]:
        token = runtime.bind_input_names(input_names)
        try:
            return validate(prompt, self.registry)
        finally:
            runtime._input_names.reset(token)

    def execute(self, request: ExecutionRequest, sink: EventSink,
                interrupt: threading.Event | None = None) -> Event:
        """Runs a graph to exactly one terminal event, which it also returns. Never raises for a bad graph or a
        failing node."""
        interrupt = interrupt or threading.Event()
        token = runtime.bind_input_names(tuple(request.inputs))
        try:
            return _Run(self, request, sink, interrupt).run()
        finally:
            runtime._input_names.reset(token)


class _Run:
    def __init__(self, engine: Engine, request: ExecutionRequest, sink: EventSink,
                 interrupt: threading.Event) -> None:
        self.engine, self.request, self.sink, self.interrupt = engine, request, sink, interrupt
        self.results: dict[str, list[list[Any]]] = {}
        self.is_changed: dict[str, Any] = {}  # node id → what its IS_CHANGED returned
        self.prompt: Any = request.prompt  # what nodes see as PROMPT (with "is_changed" entries, as in ComfyUI)
        self.ui: dict[str, dict[str, Any]] = {}
        self.timings: list[NodeTiming] = []

    def _finish(self, event: Event) -> Event:
        self.sink.emit(event)
        return event

    def run(self) -> Event:
        graph, validation = validate(self.request.prompt, self.engine.registry)
        if not validation.valid and not (self.request.allow_partial and validation.runnable_outputs
                                         and not validation.graph_errors):
            first = validation.all_errors()[0]
            return self._finish(Failed("WORKFLOW_INVALID", f"the workflow is invalid: {first.message} "
                                       f"({first.details})", first.node_id, validation=validation))
        self.sink.emit(Started(self.request.execution_id))
        order = self._order(graph, validation.runnable_outputs)
        try:
            keys = self._cache_keys(graph, order)
            self.prompt = self._prompt_with_is_changed()
            to_run, cached = self._plan(graph, validation.runnable_outputs, keys)
            if cached:
                self.sink.emit(NodesCached(tuple(sort_node_ids(sorted(cached)))))
            for node_id in sort_node_ids(sorted(cached)):
                self._replay_cached(graph.nodes[node_id], keys[node_id])
            for node_id in order:
                if node_id in to_run:
                    self._execute_node(graph, graph.nodes[node_id], keys[node_id])
        except runtime.ExecutionInterrupted as stopped:
            node_id = str(stopped.args[1]) if len(stopped.args) > 1 else ""
            return self._finish(Cancelled(node_id, tuple(self.timings)))
        except NodeFailure as failure:
            error, node = failure.error, failure.node
            if isinstance(error, runtime.ExecutionInterrupted):
                return self._finish(Cancelled(node.node_id, tuple(self.timings)))
            log.error("node %s (%s) failed", node.node_id, node.class_type, exc_info=error)
            reason = "OUT_OF_MEMORY" if _is_out_of_memory(error) else "NODE_EXECUTION_FAILED"
            return self._finish(Failed(
                reason, f"{node.class_type} (node {node.node_id}) failed: {type(error).__name__}: {error}",
                node.node_id, node.class_type, type(error).__name__,
                "".join(traceback.format_exception(error))[-8000:], tuple(self.timings)))
        outputs = tuple(ref for node_id in validation.runnable_outputs for ref in self._refs(node_id))
        return self._finish(Succeeded(outputs, tuple(self.timings), dict(self.ui)))

    @staticmethod
    def _order(graph: Graph, outputs: list[str]) -> list[str]:
        """Dependencies before dependents; outputs in id order, each with its dependencies depth-first.
        Iterative: a chain of thousands of nodes must not hit the recursion limit. The graph is acyclic here."""
        order: list[str] = []
        seen: set[str] = set()
        for output in outputs:
            if output in seen:
                continue
            seen.add(output)
            stack = [(output, iter(sorted(graph.nodes[output].links().items())))]
            while stack:
                node_id, pending = stack[-1]
                item = next(pending, None)
                if item is None:
                    stack.pop()
                    order.append(node_id)
                    continue
                source = item[1].node_id
                if source not in seen:
                    seen.add(source)
                    stack.append((source, iter(sorted(graph.nodes[source].links().items()))))
        return order

    def _cache_keys(self, graph: Graph, order: list[str]) -> dict[str, str | None]:
        keys: dict[str, str | None] = {}
        for node_id in order:
            node = graph.nodes[node_id]
            spec = self._spec(node)
            literals = {k: v for k, v in node.inputs.items() if not isinstance(v, Link)}
            linked: dict[str, tuple[str, int]] = {}
            upstream_uncacheable = False
            for name, link in node.links().items():
                source_key = keys.get(link.node_id)
                if source_key is None:
                    upstream_uncacheable = True
                    break
                linked[name] = (source_key, link.output_index)
            changed: Any = None
            if spec.has_is_changed:
                changed = self._is_changed(node, spec, literals)
                self.is_changed[node_id] = math.nan if changed is UNCACHEABLE else changed
            keys[node_id] = None if upstream_uncacheable else node_key(node.class_type, literals, linked, changed)
        return keys

    def _is_changed(self, node: GraphNode, spec: NodeSpec, literals: dict[str, Any]) -> Any:
        token = runtime.bind(self._runtime(node))
        try:
            value = spec.cls.IS_CHANGED(**_call_kwargs(spec.cls.IS_CHANGED, literals))  # type: ignore[attr-defined]
        except Exception:
            log.warning("IS_CHANGED of node %s (%s) failed; running it", node.node_id, node.class_type,
                        exc_info=True)
            return UNCACHEABLE
        finally:
            runtime.unbind(token)
        if isinstance(value, float) and math.isnan(value):
            return UNCACHEABLE
        return value

    def _prompt_with_is_changed(self) -> Any:
        """ComfyUI records each IS_CHANGED result in the prompt as `"is_changed": [value]`, and SaveImage embeds
        that prompt in the PNG; doing the same keeps saved files byte-identical to ComfyUI's."""
        if not self.is_changed or not isinstance(self.request.prompt, dict):
            return self.request.prompt
        prompt = dict(self.request.prompt)
        for node_id, value in self.is_changed.items():
            if isinstance(prompt.get(node_id), dict):
                prompt[node_id] = {**prompt[node_id], "is_changed": [value]}
        return prompt

    def _plan(self, graph: Graph, outputs: list[str], keys: dict[str, str | None]) -> tuple[set[str], set[str]]:
        """Which nodes must run and which come from the cache; nodes needed only by cached ones do neither."""
        to_run: set[str] = set()
        cached: set[str] = set()
        stack = list(outputs)
        while stack:
            node_id = stack.pop()
            if node_id in to_run or node_id in cached:
                continue
            key = keys[node_id]
            # Output nodes always run: every execution has its own output directory, so replaying a cached
            # SaveImage would report files that only exist in an earlier execution's directory. (ComfyUI shares one
            # output directory and replays them.) What they depend on still comes from the cache.
            if key is not None and key in self.engine.cache and not self._spec(graph.nodes[node_id]).output_node:
                cached.add(node_id)
                continue
            to_run.add(node_id)
            stack.extend(link.node_id for link in graph.nodes[node_id].links().values())
        return to_run, cached

    def _replay_cached(self, node: GraphNode, key: str | None) -> None:
        entry = self.engine.cache.get(key)
        assert entry is not None
        self.results[node.node_id] = entry.outputs
        self.timings.append(NodeTiming(node.node_id, node.class_type, time.time(), 0.0, True))
        if entry.ui is not None:
            self.ui[node.node_id] = entry.ui
            self.sink.emit(NodeExecuted(node.node_id, node.class_type, entry.ui, 0.0, cached=True))

    def _spec(self, node: GraphNode) -> NodeSpec:
        spec = self.engine.registry.get(node.class_type)
        assert spec is not None  # validated
        return spec

    def _runtime(self, node: GraphNode) -> runtime.NodeRuntime:
        request = self.request

        def progress(value: int, total: int, preview: Any) -> None:
            self.sink.emit(NodeProgress(node.node_id, int(value), int(total)))
            if isinstance(preview, tuple) and len(preview) == 2 and isinstance(preview[1], bytes):
                self.sink.emit(Preview(node.node_id, str(preview[0]), preview[1]))

        return runtime.NodeRuntime(
            execution_id=request.execution_id, node_id=node.node_id, class_type=node.class_type,
            prompt=self.prompt, extra_pnginfo=request.extra_pnginfo, input_dir=request.input_dir,
            output_dir=request.output_dir, temp_dir=request.temp_dir, inputs=dict(request.inputs),
            report_progress=progress, is_interrupted=self.interrupt.is_set)

    def _inputs(self, node: GraphNode, spec: NodeSpec) -> dict[str, list[Any]]:
        """Each input as a list of values (ComfyUI's list semantics)."""
        values: dict[str, list[Any]] = {}
        for name, definition in spec.input_defs().items():
            if definition.category == "hidden":
                hidden = {"PROMPT": self.prompt, "EXTRA_PNGINFO": self.request.extra_pnginfo,
                          "UNIQUE_ID": node.node_id}.get(definition.type)
                if hidden is not None:
                    values[name] = [hidden]
                continue
            if name not in node.inputs:
                continue
            value = node.inputs[name]
            values[name] = self.results[value.node_id][value.output_index] if isinstance(value, Link) else [value]
        return values

    def _execute_node(self, graph: Graph, node: GraphNode, key: str | None) -> None:
        if self.interrupt.is_set():
            raise runtime.ExecutionInterrupted("interrupted", node.node_id)
        spec = self._spec(node)
        self.sink.emit(NodeStarted(node.node_id, node.class_type))
        started_at, started = time.time(), time.perf_counter()
        inputs = self._inputs(node, spec)
        token = runtime.bind(self._runtime(node))
        try:
            outputs, ui = self._map_over_lists(node, spec, inputs)
        except NodeFailure:
            raise
        except BaseException as error:
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            raise NodeFailure(node, error) from error
        finally:
            runtime.unbind(token)
        seconds = time.perf_counter() - started
        self.results[node.node_id] = outputs
        self.timings.append(NodeTiming(node.node_id, node.class_type, started_at, seconds, False))
        self.engine.cache.put(key, outputs, ui)
        if ui is not None:
            self.ui[node.node_id] = ui
            self.sink.emit(NodeExecuted(node.node_id, node.class_type, ui, seconds))

    def _map_over_lists(self, node: GraphNode, spec: NodeSpec, inputs: dict[str, list[Any]]
                        ) -> tuple[list[list[Any]], dict[str, Any] | None]:
        instance = spec.cls()
        function = getattr(instance, spec.function)
        if spec.input_is_list:
            calls = [inputs]
        else:
            length = max((len(v) for v in inputs.values()), default=1)
            if any(len(v) == 0 for v in inputs.values()):
                length = 0  # an empty list upstream: ComfyUI runs nothing and outputs empty lists
            calls = [{k: v[i] if i < len(v) else v[-1] for k, v in inputs.items()} for i in range(length)]
        outputs: list[list[Any]] = [[] for _ in spec.return_types]
        ui: dict[str, Any] | None = None
        for arguments in calls:
            runtime.check_interrupted()
            returned = function(**arguments)
            result: Any = returned
            if isinstance(returned, dict):
                if isinstance(returned.get("ui"), Mapping):
                    ui = ui or {}
                    _merge_ui(ui, returned["ui"])
                result = returned.get("result", ())
            if result is None:
                result = ()
            if not isinstance(result, (tuple, list)) or (len(result) != len(spec.return_types)
                                                         and not (not result and spec.output_node)):
                raise TypeError(f"{spec.function}() returned {type(result).__name__} of length "
                                f"{len(result) if isinstance(result, (tuple, list)) else '?'}, but "
                                f"{node.class_type} declares {len(spec.return_types)} output(s)")
            for index, value in enumerate(result):
                if spec.output_is_list[index]:
                    outputs[index].extend(value)
                else:
                    outputs[index].append(value)
        return outputs, ui

    def _refs(self, node_id: str) -> list[OutputRef]:
        refs = []
        for kind, items in self.ui.get(node_id, {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, Mapping) and "filename" in item:
                    refs.append(OutputRef(node_id, str(item["filename"]), str(item.get("subfolder", "")),
                                          str(item.get("type", "output")), kind))
        return refs
