"""The example graphs as files: ComfyUI's workflow_api.json shape (titles included), valid against the built-in
node catalog the way the control plane validates a submission, and the sizes the e2e tests expect; plus the demo
checkpoint script's destinations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from gpu_executor.engine.catalog_registry import registry_from_object_info, with_extra_choices, with_input_files
from gpu_executor.engine.registry import NodeRegistry, build_registry
from gpu_executor.engine.validation import validate

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GRAPHS = sorted(EXAMPLES.glob("*/workflow_api.json"))
DEMO_CHECKPOINT = "comfymesh-demo-sd15.safetensors"


def _graph(path: Path) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads(path.read_text())
    return graph


def _by_title(graph: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["_meta"]["title"]: node for node in graph.values()}


@pytest.fixture(scope="module")
def catalog_registry() -> NodeRegistry:
    """The built-in catalog as executors publish it (object_info), which submit-time validation runs against."""
    return registry_from_object_info(build_registry().catalog())


def test_every_example_directory_has_its_graph() -> None:
    assert [p.parent.name for p in GRAPHS] == ["image-processing", "img2img", "txt2img"]


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.parent.name)
def test_graphs_are_in_comfyuis_api_format_with_titles(path: Path) -> None:
    graph = _graph(path)
    for node_id, node in graph.items():
        assert node_id.isdigit(), node_id
        assert list(node) == ["inputs", "class_type", "_meta"], node_id  # the key order ComfyUI exports
        assert isinstance(node["_meta"]["title"], str) and node["_meta"]["title"], node_id
    titles = [node["_meta"]["title"] for node in graph.values()]
    assert len(titles) == len(set(titles)), "titles address nodes (comfymesh run --set), so they are unique"


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.parent.name)
def test_graphs_validate_against_the_builtin_catalog(path: Path, catalog_registry: NodeRegistry) -> None:
    graph = _graph(path)
    # What a submission supplies: the input file it sends, and the demo checkpoint (uploaded or in models/).
    registry = with_extra_choices(with_input_files(catalog_registry, ["input.png"]),
                                  lambda name: [DEMO_CHECKPOINT] if name == "ckpt_name" else [])
    _, result = validate(graph, registry)
    assert not result.graph_errors and not result.node_errors, (result.graph_errors, result.node_errors)
    assert result.runnable_outputs and not result.skipped_outputs


def test_model_graphs_need_the_demo_checkpoint(catalog_registry: NodeRegistry) -> None:
    """Without it, validation names the missing model: the check above is not vacuous."""
    _, result = validate(_graph(EXAMPLES / "txt2img" / "workflow_api.json"), catalog_registry)
    assert [e.input_name for item in result.node_errors.values() for e in item.errors] == ["ckpt_name"]


def test_the_image_processing_graph_needs_no_model() -> None:
    nodes = _by_title(_graph(EXAMPLES / "image-processing" / "workflow_api.json"))
    assert set(nodes) == {"Canvas", "Invert", "Blur", "Resize", "Save"}
    assert not any("Loader" in node["class_type"] or node["class_type"] == "LoadImage" for node in nodes.values())
    assert (nodes["Resize"]["inputs"]["width"], nodes["Resize"]["inputs"]["height"]) == (128, 96)


def test_the_txt2img_graph_is_tiny_and_titled_for_overrides() -> None:
    nodes = _by_title(_graph(EXAMPLES / "txt2img" / "workflow_api.json"))
    assert {"Positive Prompt", "Negative Prompt", "Sampler", "Save"} <= set(nodes)
    assert nodes["Positive Prompt"]["class_type"] == nodes["Negative Prompt"]["class_type"] == "CLIPTextEncode"
    sampler = nodes["Sampler"]["inputs"]
    assert sampler["steps"] <= 4 and sampler["denoise"] == 1
    [checkpoint] = [n for n in nodes.values() if n["class_type"] == "CheckpointLoaderSimple"]
    assert checkpoint["inputs"]["ckpt_name"] == DEMO_CHECKPOINT
    [latent] = [n for n in nodes.values() if n["class_type"] == "EmptyLatentImage"]
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (64, 64)


def test_the_img2img_graph_loads_its_committed_input() -> None:
    nodes = _by_title(_graph(EXAMPLES / "img2img" / "workflow_api.json"))
    assert nodes["Input Image"] == {"inputs": {"image": "input.png"}, "class_type": "LoadImage",
                                    "_meta": {"title": "Input Image"}}
    assert 0 < nodes["Sampler"]["inputs"]["denoise"] < 1
    assert {n["class_type"] for n in nodes.values()} >= {"VAEEncode", "KSampler", "VAEDecode", "SaveImage"}
    with Image.open(EXAMPLES / "img2img" / "input.png") as image:
        assert image.format == "PNG" and image.size == (96, 64)
        assert image.size[0] % 8 == 0 and image.size[1] % 8 == 0  # the VAE works in 8-pixel cells


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    """examples/make_demo_checkpoint.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("make_demo_checkpoint", EXAMPLES / "make_demo_checkpoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_checkpoint_destinations(demo: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert demo.resolve_destination(None, {"COMFYMESH_HOME": str(home)}) == \
        home / "models" / "checkpoints" / DEMO_CHECKPOINT
    assert demo.resolve_destination(None, {"COMFYMESH_MODELS_DIR": "/m", "COMFYMESH_HOME": str(home)}) == \
        Path("/m/checkpoints") / DEMO_CHECKPOINT
    assert demo.resolve_destination(None, {}) == Path(".comfymesh/models/checkpoints") / DEMO_CHECKPOINT
    assert demo.resolve_destination(tmp_path, {}) == tmp_path / DEMO_CHECKPOINT  # an existing directory
    assert demo.resolve_destination(tmp_path / "x.safetensors", {}) == tmp_path / "x.safetensors"


def test_the_demo_checkpoint_api_key_defaults(demo: Any, tmp_path: Path) -> None:
    assert demo.default_api_key({"COMFYMESH_API_KEY": "cm_1", "COMFYMESH_HOME": str(tmp_path)}) == "cm_1"
    (tmp_path / "admin.key").write_text("cm_admin\n")
    assert demo.default_api_key({"COMFYMESH_HOME": str(tmp_path)}) == "cm_admin"
    with pytest.raises(demo.DemoCheckpointError, match="no API key"):
        demo.default_api_key({"COMFYMESH_HOME": str(tmp_path / "nowhere")})


@pytest.mark.parametrize(("given", "expected"), [
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),  # what the CLI and COMFYMESH_URL take
    ("http://gw.example:8080/", "http://gw.example:8080"),
    ("https://gw.example", "https://gw.example"),
])
def test_checkpoint_script_takes_the_gateway_as_the_cli_does(demo: ModuleType, given: str, expected: str) -> None:
    assert demo.gateway_url(given) == expected
