"""Submit-time validation from the node catalog: the executor's validator on catalog specs gives the executor's
answers (same errors on the same graphs), without torch, and ValidateWorkflow serves it over gRPC."""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from comfymesh.common.v1 import catalog_pb2, validation_pb2
from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from gpu_executor.engine import runtime
from gpu_executor.engine.catalog_registry import registry_from_object_info, spec_from_object_info
from gpu_executor.engine.errors import ValidationResult
from gpu_executor.engine.graph import Graph as EngineGraph
from gpu_executor.engine.registry import NodeRegistry, build_registry
from gpu_executor.engine.validation import validate
from service_runtime.errors import Reason, ServiceError
from service_runtime.grpc import GrpcServer, ServiceBinding, channel_to
from service_runtime.processes import free_port
from service_runtime.settings import Settings
from service_runtime.transport.catalog_codec import definition_from_object_info, object_info_from_definition
from service_runtime.transport.graph_codec import graph_from_proto, graph_to_json, graph_to_proto
from services.workflow.catalog import CatalogGroup, ExecutorCatalog
from services.workflow.convert import validation_to_proto
from services.workflow.transport import WorkflowServicer
from services.workflow.validation import (
    WorkflowValidation,
    catalog_registry,
    invalid_workflow_error,
    raise_if_invalid,
    validate_graph,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
MODELS = {"checkpoints": ["tiny.safetensors", "sub/other.safetensors"], "loras": ["style.safetensors"],
          "vae": ["v.safetensors"], "clip": ["c1.safetensors", "c2.safetensors"]}


class StaticCatalog(ExecutorCatalog):
    """The catalog an executor would publish, without the executor."""

    def __init__(self, definitions: list[catalog_pb2.NodeDefinition]) -> None:
        super().__init__(lambda: cast(Any, None))
        self._definitions = definitions

    async def definitions(self) -> list[catalog_pb2.NodeDefinition]:
        return self._definitions


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for folder, names in MODELS.items():
        for name in names:
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_bytes(b"not really a model")
    return root


@contextlib.contextmanager
def executor_context(models_root: Path, input_names: tuple[str, ...] = ()) -> Iterator[None]:
    """What the executor binds while it validates: its model folders and the execution's input files."""
    models = runtime.bind_models_root(models_root)
    inputs = runtime.bind_input_names(input_names)
    try:
        yield
    finally:
        runtime._input_names.reset(inputs)
        runtime._model_dirs.reset(models)


@pytest.fixture(scope="module")
def executor_registry() -> NodeRegistry:
    """The executor's real registry: the built-in nodes (classes, torch and all)."""
    registry = build_registry([])
    assert not registry.errors
    return registry


@pytest.fixture(scope="module")
def definitions(executor_registry: NodeRegistry, models_root: Path) -> list[catalog_pb2.NodeDefinition]:
    """The catalog as Describe publishes it (object_info → NodeDefinition), listing the executor's models."""
    with executor_context(models_root):
        object_info = executor_registry.catalog()
    assert object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == sorted(MODELS["checkpoints"])
    return [definition_from_object_info(name, info) for name, info in object_info.items()]


@pytest.fixture(scope="module")
def catalog_specs(definitions: list[catalog_pb2.NodeDefinition]) -> NodeRegistry:
    registry = registry_from_object_info({d.name: object_info_from_definition(d) for d in definitions})
    assert not registry.errors
    return registry


@pytest.fixture
def catalog(definitions: list[catalog_pb2.NodeDefinition]) -> StaticCatalog:
    return StaticCatalog(definitions)


def txt2img(**changes: Any) -> dict[str, Any]:
    graph: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler", "_meta": {"title": "Sampler"},
              "inputs": {"seed": 2**64 - 1, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                         "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "cat", "images": ["8", 0]}},
    }
    for path, value in changes.items():  # "3.steps" → graph["3"]["inputs"]["steps"]; "3" → the whole node
        node_id, _, name = path.partition(".")
        if not name:
            if value is None:
                del graph[node_id]
            else:
                graph[node_id] = value
        elif value is None:
            del graph[node_id]["inputs"][name]
        else:
            graph[node_id]["inputs"][name] = value
    return graph


def _seen(result: ValidationResult) -> dict[str, Any]:
    return {
        "graph_errors": [vars(e) for e in result.graph_errors],
        "node_errors": {k: (v.class_type, [vars(e) for e in v.errors], sorted(v.dependent_outputs))
                        for k, v in result.node_errors.items()},
        "runnable": result.runnable_outputs, "skipped": result.skipped_outputs, "valid": result.valid,
    }


def _inputs(graph: EngineGraph) -> dict[str, dict[str, Any]]:
    return {node_id: node.inputs for node_id, node in graph.nodes.items()}


GRAPHS = {
    "valid": txt2img(),
    "literals converted": txt2img(**{"3.steps": "20", "3.cfg": 7, "5.width": 512.0, "9.filename_prefix": 5}),
    "second checkpoint in a subfolder": txt2img(**{"4.ckpt_name": "sub/other.safetensors"}),
    "unknown class": txt2img(**{"8": {"class_type": "NoSuchDecoder", "inputs": {"samples": ["3", 0]}}}),
    "required input missing": txt2img(**{"3.steps": None}),
    "return type mismatch": txt2img(**{"3.model": ["4", 1]}),
    "invalid literal type": txt2img(**{"3.steps": "many"}),
    "literal for a link-only input": txt2img(**{"3.model": {"not": "a link"}}),
    "smaller than min": txt2img(**{"3.steps": 0}),
    "bigger than max": txt2img(**{"3.seed": 2**64, "5.width": 100_000}),
    "not in list": txt2img(**{"3.sampler_name": "nope", "3.scheduler": "sometimes"}),
    "model not on any executor": txt2img(**{"4.ckpt_name": "missing.safetensors"}),
    "dependency cycle": txt2img(**{"6.clip": ["7", 0], "7": {"class_type": "CLIPTextEncode",
                                                                "inputs": {"text": "", "clip": ["6", 0]}}}),
    "no output node": txt2img(**{"9": None}),
    "link to a missing node": txt2img(**{"8.vae": ["42", 0]}),
    "output index out of range": txt2img(**{"8.vae": ["4", 7]}),
    "two outputs, one broken": {**txt2img(**{"3.steps": 0}),
                                "20": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8,
                                                                             "batch_size": 1, "color": 0}},
                                "21": {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}},
    "loras and a vae": txt2img(**{
        "10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "nope",
                                                      "strength_model": 1.0, "strength_clip": 200.0}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": "v.safetensors"}},
        "3.model": ["10", 0], "8.vae": ["11", 0]}),
    "dual clip": txt2img(**{"12": {"class_type": "DualCLIPLoader",
                                   "inputs": {"clip_name1": "c1.safetensors", "clip_name2": "c3.safetensors",
                                              "type": "sdxl"}},
                            "6.clip": ["12", 0]}),
    "malformed node": {"1": {"class_type": "SaveImage", "inputs": [1]}, "2": "not a node"},
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_catalog_specs_give_the_executors_answers(name: str, executor_registry: NodeRegistry,
                                                  catalog_specs: NodeRegistry, models_root: Path) -> None:
    graph = GRAPHS[name]
    with executor_context(models_root):
        executor_graph, executor_result = validate(copy.deepcopy(graph), executor_registry)
    catalog_graph, catalog_result = validate(copy.deepcopy(graph), catalog_specs)
    assert _seen(catalog_result) == _seen(executor_result)
    assert _inputs(catalog_graph) == _inputs(executor_graph)
    if name in ("valid", "literals converted", "second checkpoint in a subfolder"):
        assert catalog_result.valid
    else:
        assert not catalog_result.valid


def test_specs_read_from_object_info_match_the_classes(executor_registry: NodeRegistry,
                                                       catalog_specs: NodeRegistry, models_root: Path) -> None:
    assert set(catalog_specs.specs) == set(executor_registry.specs)
    with executor_context(models_root):
        for name, real in executor_registry.specs.items():
            spec = catalog_specs.specs[name]
            assert (spec.return_types, spec.return_names, spec.output_is_list, spec.output_node, spec.input_is_list,
                    spec.category, spec.display_name, spec.python_module) == \
                (real.return_types, real.return_names, real.output_is_list, real.output_node, real.input_is_list,
                 real.category, real.display_name, real.python_module), name
            assert spec.input_defs() == real.input_defs(), name
            assert not spec.has_validate_inputs and not spec.has_is_changed
    assert catalog_specs.specs["LoadImage"].deferred_inputs == {"image"}
    assert catalog_specs.specs["KSampler"].deferred_inputs == frozenset()


def test_catalog_specs_do_not_run() -> None:
    spec = spec_from_object_info("Thing", {"input": {"required": {"x": ["INT", {"min": 0}]}}, "output": ["INT"],
                                           "output_node": True})
    with pytest.raises(RuntimeError, match="catalog entry"):
        getattr(spec.cls(), spec.function)(x=1)


def test_bad_catalog_entries_are_reported_and_skipped() -> None:
    registry = registry_from_object_info({
        "Good": {"input": {"required": {}}, "output": ["IMAGE"], "output_node": True},
        "NotAnObject": cast(Any, [1, 2]),
        "BadInputs": {"input": {"required": {"x": 5}}, "output": []},
        "MismatchedNames": {"input": {}, "output": ["INT"], "output_name": ["a", "b"]},
    })
    assert set(registry.specs) == {"Good"}
    assert sorted(e.node_class for e in registry.errors) == ["BadInputs", "MismatchedNames", "NotAnObject"]


def test_v3_combos_and_input_order() -> None:
    spec = spec_from_object_info("V3", {
        "input": {"required": {"b": ["INT"], "a": ["COMBO", {"options": ["x", "y"]}]}},
        "input_order": {"required": ["a", "b"]}, "output": [], "output_node": True})
    defs = spec.input_defs()
    assert list(defs) == ["a", "b"] and defs["a"].choices == ("x", "y")


def test_validation_imports_no_torch() -> None:
    """The control plane validates with the engine's validator and catalog specs: neither may pull in torch."""
    code = ("import sys; import gpu_executor.engine.validation, gpu_executor.engine.catalog_registry, "
            "services.workflow.validation, services.workflow.transport; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'gpu_executor.nodes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         timeout=120).stdout
    assert out.strip() == "[]"


# -- the domain: validate_graph / raise_if_invalid --------------------------------------------------------------


async def test_validate_graph_returns_converted_graph(catalog: StaticCatalog) -> None:
    graph = txt2img(**{"3.steps": "25", "3.cfg": 7})
    checked, result = await validate_graph(graph, catalog)
    assert result.valid and result.runnable_outputs == ("9",)
    assert checked["3"]["inputs"]["steps"] == 25 and isinstance(checked["3"]["inputs"]["cfg"], float)
    assert checked["3"]["inputs"]["seed"] == 2**64 - 1 and checked["3"]["_meta"] == {"title": "Sampler"}
    assert checked["3"]["inputs"]["model"] == ["4", 0]
    assert graph["3"]["inputs"]["steps"] == "25"  # the caller's graph is not changed
    raise_if_invalid(result)


async def test_registry_is_built_once_per_catalog_listing(catalog: StaticCatalog) -> None:
    assert await catalog_registry(catalog) is await catalog_registry(catalog)


async def test_unknown_model_is_model_not_found(catalog: StaticCatalog) -> None:
    _, result = await validate_graph(txt2img(**{"4.ckpt_name": "missing.safetensors"}), catalog)
    [issue] = result.all_errors()
    assert (issue.type, issue.message, issue.node_id, issue.input_name, issue.value) == (
        "model_not_found", "Model not found", "4", "ckpt_name", "missing.safetensors")
    assert "tiny.safetensors" in issue.details
    with pytest.raises(ServiceError) as caught:
        raise_if_invalid(result)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.MODEL_NOT_FOUND)
    assert error.metadata["models"] == "missing.safetensors"
    [violation] = error.field_violations
    assert violation.field == 'graph.nodes["4"].inputs.ckpt_name' and violation.reason == "MODEL_NOT_FOUND"
    message = validation_to_proto(result).node_errors["4"].errors[0]
    assert (message.type, message.type_name) == (validation_pb2.NODE_ERROR_TYPE_MODEL_NOT_FOUND, "model_not_found")


async def test_other_combo_errors_stay_value_not_in_list(catalog: StaticCatalog) -> None:
    _, result = await validate_graph(txt2img(**{"4.ckpt_name": "missing.safetensors", "3.sampler_name": "x"}),
                                     catalog)
    assert sorted((e.type, e.input_name) for e in result.all_errors()) == [
        ("model_not_found", "ckpt_name"), ("value_not_in_list", "sampler_name")]
    with pytest.raises(ServiceError) as caught:
        raise_if_invalid(result)
    assert caught.value.reason == Reason.WORKFLOW_INVALID


@pytest.mark.parametrize(("changes", "reason"), [
    ({"8": {"class_type": "NoSuchDecoder", "inputs": {"samples": ["3", 0]}}}, Reason.NODE_CLASS_NOT_FOUND),
    ({"9": None}, Reason.WORKFLOW_NO_OUTPUTS),
    ({"3.steps": 0}, Reason.WORKFLOW_INVALID),
    ({"3.steps": 0, "4.ckpt_name": "missing.safetensors"}, Reason.WORKFLOW_INVALID),
])
async def test_reasons(catalog: StaticCatalog, changes: dict[str, Any], reason: Reason) -> None:
    _, result = await validate_graph(txt2img(**changes), catalog)
    with pytest.raises(ServiceError) as caught:
        raise_if_invalid(result)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.reason == reason
    assert len(caught.value.field_violations) == len(result.all_errors())


async def test_unknown_classes_are_named(catalog: StaticCatalog) -> None:
    graph = {"1": {"class_type": "Mystery", "inputs": {}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    _, result = await validate_graph(graph, catalog)
    error = invalid_workflow_error(result)
    assert error.reason == Reason.NODE_CLASS_NOT_FOUND and error.metadata["class_types"] == "Mystery"
    assert {v.field for v in error.field_violations} == {'graph.nodes["1"]', 'graph.nodes["2"].inputs.images'}
    assert "graph" not in {v.field for v in error.field_violations}


async def test_field_violations_are_bounded(catalog: StaticCatalog) -> None:
    graph = {str(i): {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 0, "batch_size": 0, "color": -1}}
             for i in range(100)}
    graph.update({f"p{i}": {"class_type": "PreviewImage", "inputs": {"images": [str(i), 0]}} for i in range(100)})
    _, result = await validate_graph(graph, catalog)
    error = invalid_workflow_error(result)
    assert error.metadata["error_count"] == "400"
    assert 0 < len(error.field_violations) <= 20
    assert int(error.metadata["errors_omitted"]) == 400 - len(error.field_violations)
    assert sum(len(v.description) for v in error.field_violations) < 4000


async def test_upload_widgets_are_left_to_the_executor_without_input_files(
        catalog: StaticCatalog, executor_registry: NodeRegistry, models_root: Path) -> None:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    _, result = await validate_graph(graph, catalog)
    assert result.valid  # ValidateWorkflow has no input files: the executor checks the name
    _, result = await validate_graph(graph, catalog, input_files=["photo.png"])
    assert result.valid
    annotated = {**graph, "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png [input]"}}}
    _, result = await validate_graph(annotated, catalog, input_files=["photo.png"])
    assert result.valid
    _, result = await validate_graph(graph, catalog, input_files=["other.png"])
    assert [(e.type, e.node_id, e.input_name) for e in result.all_errors()] == [("value_not_in_list", "1", "image")]
    # The executor refuses the same graph (through LoadImage's own VALIDATE_INPUTS) and accepts the valid one.
    with executor_context(models_root, ("other.png",)):
        _, executor_result = validate(copy.deepcopy(graph), executor_registry)
    assert [(e.type.value, e.node_id) for e in executor_result.all_errors()] == [("custom_validation_failed", "1")]
    with executor_context(models_root, ("photo.png",)):
        assert validate(copy.deepcopy(graph), executor_registry)[1].valid


def test_validation_result_to_proto() -> None:
    from services.workflow.validation import NodeIssues, ValidationIssue

    result = WorkflowValidation(
        graph_errors=(ValidationIssue("prompt_no_outputs", "Prompt has no outputs", "none"),),
        node_errors={"3": NodeIssues("KSampler", (ValidationIssue("value_smaller_than_min", "Value 0 smaller than min "
                                                                  "of 1", "steps", "3", "steps"),
                                                  ValidationIssue("brand_new_kind", "?", "", "3")), ("9",))},
        runnable_outputs=("10",), skipped_outputs=("9",))
    message = validation_to_proto(result)
    assert json_format.MessageToDict(message, preserving_proto_field_name=True) == {
        "graph_errors": [{"type": "NODE_ERROR_TYPE_PROMPT_NO_OUTPUTS", "type_name": "prompt_no_outputs",
                          "message": "Prompt has no outputs", "details": "none"}],
        "node_errors": {"3": {"class_type": "KSampler", "dependent_output_node_ids": ["9"], "errors": [
            {"type": "NODE_ERROR_TYPE_VALUE_SMALLER_THAN_MIN", "type_name": "value_smaller_than_min",
             "message": "Value 0 smaller than min of 1", "details": "steps", "input_name": "steps", "node_id": "3"},
            {"type_name": "brand_new_kind", "message": "?", "node_id": "3"}]}},
        "runnable_output_node_ids": ["10"], "skipped_output_node_ids": ["9"]}


# -- ValidateWorkflow over gRPC ---------------------------------------------------------------------------------


async def _server(catalog: ExecutorCatalog) -> GrpcServer:
    servicer = WorkflowServicer(cast(Any, None), catalog, settings=Settings())  # type: ignore[abstract]
    server = GrpcServer(Settings(metrics_port=0, shutdown_grace_seconds=0.5), "test",
                        [ServiceBinding("comfymesh.workflow.v1.WorkflowService", servicer,
                                        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server)],
                        port=0, host="127.0.0.1")
    await server.start()
    return server


@pytest.fixture
async def stub(catalog: StaticCatalog) -> AsyncIterator[workflow_service_pb2_grpc.WorkflowServiceAsyncStub]:
    server = await _server(catalog)
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield workflow_service_pb2_grpc.WorkflowServiceStub(channel)
    await server.stop(0.1)


def _error(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    status = rpc_status.from_call(cast(Any, error))
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    fields = [v.field for v in bad.field_violations] if len(status.details) > 1 and status.details[1].Unpack(bad) \
        else []
    return error.code(), info.reason, fields


async def test_validate_workflow_over_grpc_in_each_encoding(
        stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub) -> None:
    graph = txt2img(**{"3.steps": "30"})
    struct = struct_pb2.Struct()
    struct.update(txt2img(**{"3.seed": 42, "3.steps": "30"}))
    for request in (workflow_service_pb2.ValidateWorkflowRequest(workflow_json=graph_to_json(graph)),
                    workflow_service_pb2.ValidateWorkflowRequest(graph=graph_to_proto(graph)),
                    workflow_service_pb2.ValidateWorkflowRequest(workflow=struct)):
        response = await stub.ValidateWorkflow(request)
        assert response.result.valid and list(response.result.runnable_output_node_ids) == ["9"]
        checked = graph_from_proto(response.graph)
        assert checked["3"]["inputs"]["steps"] == 30
        if request.WhichOneof("workflow_source") != "workflow":
            assert checked["3"]["inputs"]["seed"] == 2**64 - 1
            assert response.graph.nodes["3"].inputs["seed"].literal.uint_value == 2**64 - 1


async def test_invalid_graph_is_a_result_not_an_error(stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub) -> None:
    graph = txt2img(**{"3.steps": 0, "4.ckpt_name": "gone.safetensors", "3.seed": 2**70})
    response = await stub.ValidateWorkflow(workflow_service_pb2.ValidateWorkflowRequest(
        workflow_json=json.dumps(graph)))
    assert not response.result.valid
    errors = {(e.type_name, e.input_name) for n in response.result.node_errors.values() for e in n.errors}
    assert errors == {("value_smaller_than_min", "steps"), ("value_bigger_than_max", "seed"),
                      ("model_not_found", "ckpt_name")}
    assert list(response.result.skipped_output_node_ids) == ["9"]
    assert not response.HasField("graph")  # 2^70 has no typed form; the result says what is wrong


@pytest.mark.parametrize(("request_message", "reason"), [
    (workflow_service_pb2.ValidateWorkflowRequest(), "INVALID_ARGUMENT"),
    (workflow_service_pb2.ValidateWorkflowRequest(workflow_json="{not json"), "WORKFLOW_MALFORMED"),
    (workflow_service_pb2.ValidateWorkflowRequest(workflow_json="[1, 2]"), "WORKFLOW_MALFORMED"),
    (workflow_service_pb2.ValidateWorkflowRequest(workflow_json='{"1": {"inputs": {}}}'), "WORKFLOW_MALFORMED"),
])
async def test_malformed_encodings_are_invalid_argument(stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub,
                                                        request_message: Any, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ValidateWorkflow(request_message)
    code, got, _ = _error(caught.value)
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


async def test_inexact_struct_integers_are_refused(stub: workflow_service_pb2_grpc.WorkflowServiceAsyncStub) -> None:
    struct = struct_pb2.Struct()
    struct.update(txt2img())  # the seed 2^64 - 1 became a double
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ValidateWorkflow(workflow_service_pb2.ValidateWorkflowRequest(workflow=struct))
    code, reason, fields = _error(caught.value)
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INEXACT_INTEGER",
                                      ["workflow.3.inputs.seed"])


async def test_no_executor_means_unavailable() -> None:
    settings = Settings(executor_addr=f"127.0.0.1:{free_port()}")
    catalog = ExecutorCatalog(lambda: channel_to("executor", settings))
    server = await _server(catalog)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await workflow_service_pb2_grpc.WorkflowServiceStub(channel).ValidateWorkflow(
                    workflow_service_pb2.ValidateWorkflowRequest(workflow_json=json.dumps(txt2img())), timeout=30)
    finally:
        await server.stop(0.1)
        await catalog.close()
    code, reason, _ = _error(caught.value)
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "NO_CAPABLE_EXECUTOR")


class GroupedCatalog(ExecutorCatalog):
    """A fleet that mixes catalogs (e.g. built-in executors beside ComfyUI ones), without the fleet."""

    def __init__(self, groups: dict[str, tuple[str, int, list[catalog_pb2.NodeDefinition]]]) -> None:
        super().__init__(lambda: cast(Any, None))
        self._by_hash = {h: defs for h, (_, _, defs) in groups.items()}
        union = {d.name: d for _, _, defs in groups.values() for d in defs}
        self._union = [union[name] for name in sorted(union)]
        self._groups = tuple(sorted((CatalogGroup(h, engine, count, frozenset(d.name for d in defs))
                                     for h, (engine, count, defs) in groups.items()),
                                    key=lambda g: -g.executor_count))

    async def definitions(self) -> list[catalog_pb2.NodeDefinition]:
        return self._union

    async def _definitions_of(self, catalog_hash: str) -> list[catalog_pb2.NodeDefinition]:
        return self._by_hash[catalog_hash]


async def test_mixed_fleet_validates_against_the_group_that_can_run_the_graph(
        definitions: list[catalog_pb2.NodeDefinition]) -> None:
    without_sampler = [d for d in definitions if d.name != "KSampler"]
    catalog = GroupedCatalog({"a": ("builtin", 3, without_sampler), "b": ("comfyui", 1, definitions)})
    assert [c.key for c in await catalog.candidates({"KSampler", "SaveImage"})] == ["b"]
    assert [c.key for c in await catalog.candidates({"SaveImage"})] == ["a", "b"]  # the largest group first
    _, result = await validate_graph(txt2img(), catalog)
    assert result.valid


async def test_graph_no_single_executor_can_run_is_refused(definitions: list[catalog_pb2.NodeDefinition]) -> None:
    sampler_only = [d for d in definitions if d.name in ("KSampler", "SaveImage")]
    rest = [d for d in definitions if d.name != "KSampler"]
    catalog = GroupedCatalog({"a": ("builtin", 2, rest), "b": ("comfyui", 1, sampler_only)})
    with pytest.raises(ServiceError) as caught:
        await validate_graph(txt2img(), catalog)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == Reason.NO_CAPABLE_EXECUTOR
    assert "KSampler" in caught.value.metadata["class_types"] and caught.value.metadata["engines"] == "builtin,comfyui"
    # A class no executor has at all is still the graph's own error, named per node.
    _, result = await validate_graph(txt2img(**{"3": {**txt2img()["3"], "class_type": "NoSuchSampler"}}), catalog)
    assert not result.valid and result.node_errors["3"].class_type == "NoSuchSampler"
