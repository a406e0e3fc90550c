"""Custom node packs load like ComfyUI's (a broken one is reported and skipped); the catalog is /object_info."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_executor.engine.engine import Engine
from gpu_executor.engine.events import CollectingSink, Succeeded
from gpu_executor.engine.registry import NodeRegistry, build_registry
from tests.unit.engine.conftest import PACKS, request

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]

GOOD_SINGLE_FILE = '''
class Shout:
    CATEGORY = "text"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "go"
    OUTPUT_NODE = True
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}
    def go(self, text):
        return {"ui": {"text": [text.upper()]}, "result": (text.upper(),)}

NODE_CLASS_MAPPINGS = {"Shout": Shout}
'''

PACKAGE_WITH_RELATIVE_IMPORT = {
    "__init__.py": "from .nodes import NODE_CLASS_MAPPINGS\nNODE_DISPLAY_NAME_MAPPINGS = {'Echo': 'Echo!'}\n",
    "nodes.py": '''
from .helpers import same

class Echo:
    RETURN_TYPES = ("INT",)
    FUNCTION = "go"
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"v": ("INT", {})}}
    def go(self, v):
        return (same(v),)

class NoFunction:
    RETURN_TYPES = ("INT",)
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

NODE_CLASS_MAPPINGS = {"Echo": Echo, "NoFunction": NoFunction}
''',
    "helpers.py": "def same(v):\n    return v\n",
}


def _write_packs(root: Path) -> Path:
    custom = root / "custom_nodes"
    custom.mkdir()
    (custom / "shout.py").write_text(GOOD_SINGLE_FILE)
    package = custom / "echo_pack"
    package.mkdir()
    for name, text in PACKAGE_WITH_RELATIVE_IMPORT.items():
        (package / name).write_text(text)
    (custom / "broken_import.py").write_text("import module_that_does_not_exist\n")
    (custom / "exits.py").write_text("raise SystemExit(3)\n")
    (custom / "no_mappings.py").write_text("X = 1\n")
    (custom / "skipped.py.disabled").write_text("raise RuntimeError('never imported')\n")
    return custom


def test_packs_load_and_broken_ones_are_reported(tmp_path: Path) -> None:
    registry = build_registry([_write_packs(tmp_path)], builtin=False)
    assert {"Shout", "Echo"} <= set(registry.specs)
    assert "NoFunction" not in registry.specs
    assert registry.specs["Echo"].display_name == "Echo!"
    assert registry.specs["Echo"].python_module == "custom_nodes.echo_pack"
    problems = {(e.pack, e.node_class): e.error for e in registry.errors}
    assert "ModuleNotFoundError" in problems[("broken_import", "")]
    assert "SystemExit" in problems[("exits", "")]
    assert "NODE_CLASS_MAPPINGS" in problems[("no_mappings", "")]
    assert "FUNCTION" in problems[("echo_pack", "NoFunction")]


def test_custom_nodes_run(tmp_path: Path) -> None:
    registry = build_registry([_write_packs(tmp_path), PACKS], builtin=False)
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 3}},
              "2": {"class_type": "Echo", "inputs": {"v": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Shout", "inputs": {"text": "hi"}}}
    final = Engine(registry).execute(request(tmp_path, prompt), CollectingSink())
    assert isinstance(final, Succeeded)
    assert final.ui["3"]["values"] == [3] and final.ui["4"] == {"text": ["HI"]}


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    registry = build_registry([tmp_path / "nope"], builtin=False)
    assert registry.errors and "does not exist" in registry.errors[0].error


def test_catalog_has_object_info_shape(registry: NodeRegistry) -> None:
    catalog = registry.catalog()
    add = catalog["Add"]
    assert add["input"]["required"]["b"] == ["INT", {"default": 1, "min": 0, "max": 10}]
    assert add["input_order"] == {"required": ["a", "b"], "optional": ["c"]}
    assert (add["output"], add["output_name"], add["output_is_list"]) == (["INT"], ["sum"], [False])
    assert add["display_name"] == "Add Integers" and add["output_node"] is False
    assert catalog["Show"]["output_node"] is True
    assert catalog["Show"]["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert catalog["Scale"]["input"]["required"]["mode"] == [["double", "half"]]
    json.dumps(catalog)  # serialisable as is
    assert registry.catalog_hash() == registry.catalog_hash()


def test_engine_core_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import gpu_executor.engine.engine, gpu_executor.engine.validation, gpu_executor.engine.cache\n"
        "import gpu_executor.engine.events, gpu_executor.engine.graph, gpu_executor.engine.registry\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
