"""Static validation of a workflow graph against the fleet's node catalog (ValidateWorkflow and SubmitExecution).

The checks are the executor's own (`gpu_executor.engine.validation.validate`, ComfyUI's rules and vocabulary), run
on node specs read from the catalog the executors publish (`gpu_executor.engine.catalog_registry`): node classes,
required inputs, link types and output indexes, cycles, literal types and ranges, and combo choices, which include
the models the executors have (so an unknown `ckpt_name` is caught here; its error is reported as
`model_not_found`). Two things are left to the executor, which validates again before it runs a graph: custom
`VALIDATE_INPUTS` functions (they need the node class) and upload widgets such as LoadImage's `image` when the
execution's input files are not given.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from gpu_executor.engine.catalog_registry import registry_from_object_info, with_extra_choices, with_input_files
from gpu_executor.engine.errors import NodeError, NodeErrorType, ValidationResult
from gpu_executor.engine.graph import Graph as EngineGraph
from gpu_executor.engine.graph import Link
from gpu_executor.engine.model_inputs import is_model_input
from gpu_executor.engine.registry import NodeRegistry
from gpu_executor.engine.validation import validate
from service_runtime.errors import FieldViolation, Reason, ServiceError, invalid_argument
from service_runtime.transport.catalog_codec import object_info_from_definition
from service_runtime.transport.graph_codec import Graph
from services.workflow.catalog import Candidate, ExecutorCatalog

MODEL_NOT_FOUND = "model_not_found"  # ComfyMesh's type for a combo value naming a model no executor has
MODEL_NOT_FOUND_MESSAGE = "Model not found"
# Field violations go back in a status trailer, which proxies and clients cap at a few KiB: the first errors
# are enough to act on, ValidateWorkflow returns them all.
MAX_VIOLATIONS = 20
MAX_VIOLATION_BYTES = 3000
MAX_DESCRIPTION_CHARS = 300


@dataclass(frozen=True)
class ValidationIssue:
    """One problem, in ComfyUI's vocabulary (`type` is ComfyUI's spelling, or `model_not_found`)."""

    type: str
    message: str
    details: str
    node_id: str = ""
    input_name: str = ""
    value: str = ""  # the offending literal, for model_not_found (the model name)


@dataclass(frozen=True)
class NodeIssues:
    class_type: str
    errors: tuple[ValidationIssue, ...]
    dependent_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkflowValidation:
    """What validation found (mirrors comfymesh.common.v1.ValidationResult): a graph is valid when every output
    node validates."""

    graph_errors: tuple[ValidationIssue, ...] = ()
    node_errors: dict[str, NodeIssues] = field(default_factory=dict)
    runnable_outputs: tuple[str, ...] = ()
    skipped_outputs: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.graph_errors and not self.node_errors and bool(self.runnable_outputs)

    def all_errors(self) -> list[ValidationIssue]:
        return [*self.graph_errors, *(e for n in self.node_errors.values() for e in n.errors)]


def _issue(error: NodeError, graph: EngineGraph, registry: NodeRegistry) -> ValidationIssue:
    if error.type == NodeErrorType.VALUE_NOT_IN_LIST and is_model_input(error.input_name):
        node = graph.nodes.get(error.node_id)
        spec = registry.get(node.class_type) if node is not None else None
        definition = spec.input_defs().get(error.input_name) if spec is not None else None
        if definition is not None and definition.is_combo:
            value = node.inputs.get(error.input_name) if node is not None else None
            return ValidationIssue(MODEL_NOT_FOUND, MODEL_NOT_FOUND_MESSAGE, error.details, error.node_id,
                                   error.input_name, "" if isinstance(value, Link) else str(value))
    return ValidationIssue(str(error.type), error.message, error.details, error.node_id, error.input_name)


def _from_engine(result: ValidationResult, graph: EngineGraph, registry: NodeRegistry) -> WorkflowValidation:
    return WorkflowValidation(
        graph_errors=tuple(_issue(e, graph, registry) for e in result.graph_errors),
        node_errors={node_id: NodeIssues(entry.class_type, tuple(_issue(e, graph, registry) for e in entry.errors),
                                         tuple(entry.dependent_outputs))
                     for node_id, entry in result.node_errors.items()},
        runnable_outputs=tuple(result.runnable_outputs), skipped_outputs=tuple(result.skipped_outputs))


def _checked_graph(original: Graph, checked: EngineGraph) -> Graph:
    """The graph with literal values as validation converted them (what the executor would run)."""
    plain: Graph = {}
    for node_id, node in original.items():
        parsed = checked.nodes.get(node_id)
        if parsed is None:
            plain[node_id] = node
            continue
        inputs = {name: [v.node_id, v.output_index] if isinstance(v, Link) else v for name, v in parsed.inputs.items()}
        plain[node_id] = {**node, "inputs": inputs}
    return plain


# The registries built from a catalog's definitions (per candidate key: "" the union, else a group's catalog hash),
# kept while the catalog serves the same list (its cache).
_registries: weakref.WeakKeyDictionary[ExecutorCatalog, dict[str, tuple[list[Any], NodeRegistry]]] = \
    weakref.WeakKeyDictionary()


def _registry_of(catalog: ExecutorCatalog, candidate: Candidate) -> NodeRegistry:
    kept = _registries.setdefault(catalog, {})
    cached = kept.get(candidate.key)
    if cached is not None and cached[0] is candidate.definitions:
        return cached[1]
    registry = registry_from_object_info({d.name: object_info_from_definition(d) for d in candidate.definitions})
    kept[candidate.key] = (candidate.definitions, registry)
    return registry


async def catalog_registry(catalog: ExecutorCatalog) -> NodeRegistry:
    """Node specs for the fleet's current catalog, the union of every executor's (raises UNAVAILABLE
    NO_CAPABLE_EXECUTOR when there is none)."""
    return _registry_of(catalog, Candidate("", await catalog.definitions()))


def _class_types(graph: Graph) -> set[str]:
    return {node["class_type"] for node in graph.values()
            if isinstance(node, dict) and isinstance(node.get("class_type"), str)}


async def _candidate_registries(graph: Graph, catalog: ExecutorCatalog) -> list[NodeRegistry]:
    """The registries of the executor groups that could take the graph (a fleet may mix engines, and a graph runs
    only where one executor offers every class it uses). When the classes exist in the fleet but no single group
    offers them all, that is the error; when some class exists nowhere, the union's validation reports it."""
    needed = _class_types(graph)
    candidates = await catalog.candidates(needed)
    if candidates:
        return [_registry_of(catalog, candidate) for candidate in candidates]
    union = await catalog.definitions()
    if not needed <= {d.name for d in union}:
        return [_registry_of(catalog, Candidate("", union))]
    groups = await catalog.groups()
    offered = "; ".join(f"{g.engine or 'executor'} ({g.executor_count}): {', '.join(sorted(needed & g.node_classes))}"
                        for g in groups)
    raise ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION, Reason.NO_CAPABLE_EXECUTOR,
        f"no executor offers every node class this graph uses; each group of executors offers only part of them "
        f"({offered})", {"class_types": _joined(sorted(needed)),
                         "engines": _joined(sorted({g.engine for g in groups}))})


# ComfyUI's loader inputs → the model folders their choices come from (an input not listed accepts any folder).
MODEL_FOLDERS = {"ckpt_name": ("checkpoints",), "lora_name": ("loras",), "vae_name": ("vae",),
                 "control_net_name": ("controlnet",), "unet_name": ("diffusion_models", "unet"),
                 "upscale_model_name": ("upscale_models",), "clip_vision_name": ("clip_vision",)}


def model_choices(models: Mapping[str, Collection[str]]) -> Callable[[str], Collection[str]]:
    """For a loader input, the caller's uploaded models it may name (from ModelService)."""

    def choices(input_name: str) -> Collection[str]:
        if not is_model_input(input_name):
            return ()
        if input_name.startswith("clip_name"):
            folders: tuple[str, ...] = ("text_encoders", "clip")
        else:
            folders = MODEL_FOLDERS.get(input_name, tuple(models))
        # Storage paths of tenants' models ("tenants/<t>/<name>") are not names a graph may use: the executor
        # finds a tenant's model under its plain name for that tenant only.
        return sorted({name for folder in folders for name in models.get(folder, ())
                       if not name.startswith("tenants/")})

    return choices


async def validate_graph(graph: Graph, catalog: ExecutorCatalog, *,
                         input_files: Collection[str] | None = None,
                         models: Mapping[str, Collection[str]] | None = None) -> tuple[Graph, WorkflowValidation]:
    """Validates a plain graph (from graph_codec) against the catalog.

    Returns the graph with literals converted the way the executor converts them (e.g. "5" for an INT is 5) and
    the result; an invalid graph is not an error here (see `raise_if_invalid`). `input_files`: the names of the
    execution's input files (SubmitExecution's `inputs[].name`); when given, upload widgets such as LoadImage's
    `image` must name one of them, otherwise their values are left to the executor. `models`: folder → the
    caller's models in ModelService, accepted as loader choices beyond what the executors listed (an executor
    fetches such a model from the object store when a graph names it).
    """
    first: tuple[Graph, WorkflowValidation] | None = None
    for candidate in await _candidate_registries(graph, catalog):
        registry = candidate
        if input_files is not None:
            registry = with_input_files(registry, input_files)
        if models:
            registry = with_extra_choices(registry, model_choices(models))
        checked, result = validate(graph, registry)
        outcome = _checked_graph(graph, checked), _from_engine(result, checked, registry)
        if outcome[1].valid:
            return outcome
        first = first or outcome  # the largest group's complaints, if no group accepts the graph
    assert first is not None
    return first


def _field(issue: ValidationIssue) -> str:
    if not issue.node_id:
        return "graph"
    path = f'graph.nodes["{issue.node_id}"]'
    return f"{path}.inputs.{issue.input_name}" if issue.input_name else path


def _description(issue: ValidationIssue) -> str:
    text = f"{issue.message}: {issue.details}" if issue.details else issue.message
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[:MAX_DESCRIPTION_CHARS - 1] + "…"


def _reason(kinds: set[str]) -> Reason:
    if kinds == {str(NodeErrorType.MISSING_NODE_TYPE)}:
        return Reason.NODE_CLASS_NOT_FOUND
    if kinds == {str(NodeErrorType.PROMPT_NO_OUTPUTS)}:
        return Reason.WORKFLOW_NO_OUTPUTS
    if kinds == {MODEL_NOT_FOUND}:
        return Reason.MODEL_NOT_FOUND
    if kinds == {str(NodeErrorType.MALFORMED)}:
        return Reason.WORKFLOW_MALFORMED
    return Reason.WORKFLOW_INVALID


def _joined(values: list[str], limit: int = 512) -> str:
    text = ",".join(dict.fromkeys(v for v in values if v))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def invalid_workflow_error(result: WorkflowValidation) -> ServiceError:
    """INVALID_ARGUMENT with a reason that names the problem (NODE_CLASS_NOT_FOUND, WORKFLOW_NO_OUTPUTS,
    MODEL_NOT_FOUND when those are the only problems; WORKFLOW_INVALID otherwise) and one field violation per
    error (the first ones; see MAX_VIOLATIONS)."""
    errors = result.all_errors()
    reason = _reason({e.type for e in errors})
    violations: list[FieldViolation] = []
    size = 0
    for issue in errors:
        violation = FieldViolation(_field(issue), _description(issue), issue.type.upper())
        size += len(violation.field) + len(violation.description.encode()) + len(violation.reason)
        if len(violations) >= MAX_VIOLATIONS or size > MAX_VIOLATION_BYTES:
            break
        violations.append(violation)
    metadata = {"error_count": str(len(errors))}
    if len(violations) < len(errors):
        metadata["errors_omitted"] = str(len(errors) - len(violations))
    if reason == Reason.NODE_CLASS_NOT_FOUND:
        metadata["class_types"] = _joined([result.node_errors[e.node_id].class_type for e in errors
                                           if e.node_id in result.node_errors and not e.input_name])
    elif reason == Reason.MODEL_NOT_FOUND:
        metadata["models"] = _joined([e.value for e in errors])
    if errors:
        first = errors[0]
        where = f"node {first.node_id}" + (f" input {first.input_name}" if first.input_name else "") \
            if first.node_id else "the graph"
        summary = f"{where}: {_description(first)}"
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        message = f"the workflow is invalid: {summary}{more}"
    else:
        message = "the workflow is invalid: no output node validates"
    return invalid_argument(message, *violations, reason=reason, **metadata)


def raise_if_invalid(result: WorkflowValidation) -> None:
    """Raises `invalid_workflow_error(result)` unless the graph is valid."""
    if not result.valid:
        raise invalid_workflow_error(result)
