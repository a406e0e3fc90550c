"""`python -m gpu_executor run-graph`: the local runner on real built-in nodes, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
PACKS = Path(__file__).parent / "packs"

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 2, "color": 0x204080}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "run/test"}},
}


def _run(tmp_path: Path, graph: Any, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    return subprocess.run([sys.executable, "-m", "gpu_executor", "run-graph", str(path), "--output-dir",
                           str(tmp_path / "out"), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_runs_a_graph_and_names_outputs_like_comfyui(tmp_path: Path) -> None:
    result = _run(tmp_path, GRAPH)
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split()]
    assert [p.name for p in written] == ["test_00001_.png", "test_00002_.png"]
    assert all(p.parent == tmp_path / "out" / "run" for p in written)
    pixels = np.asarray(Image.open(written[0]))
    # EmptyImage fills 0x204080 as float32 channel/255; ImageInvert is 1 - x; SaveImage writes
    # uint8(255 * x), truncating like ComfyUI (so 1 - 128/255 in float32 becomes 126, not 127).
    expected = [int(np.float32(255.0) * (np.float32(1.0) - np.float32(c) / np.float32(255.0)))
                for c in (0x20, 0x40, 0x80)]
    assert pixels.shape == (24, 32, 3) and list(pixels[0, 0]) == expected
    assert json.loads(Image.open(written[0]).text["prompt"]) == GRAPH
    assert "node 3 (SaveImage)" in result.stderr

    again = _run(tmp_path, GRAPH)  # a second run continues the counter, as ComfyUI does
    assert [Path(line).name for line in again.stdout.split()] == ["test_00003_.png", "test_00004_.png"]
    assert Path(again.stdout.split()[0]).read_bytes() == written[0].read_bytes()  # deterministic bytes


def test_invalid_graph_exits_2_with_typed_errors(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(GRAPH))
    bad["1"]["inputs"]["width"] = 0
    bad["3"]["inputs"]["images"] = ["9", 0]
    result = _run(tmp_path, bad)
    assert result.returncode == 2
    errors = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(e["type"], e["node_id"], e["input_name"]) for e in errors} == {("link_to_missing_node", "3", "images")}


def test_failing_node_exits_1(tmp_path: Path) -> None:
    escape = json.loads(json.dumps(GRAPH))
    escape["3"]["inputs"]["filename_prefix"] = "../escape"
    result = _run(tmp_path, escape)
    assert result.returncode == 1
    error = json.loads(result.stdout.splitlines()[0])
    assert (error["error"], error["node_id"], error["class_type"]) == ("NODE_EXECUTION_FAILED", "3", "SaveImage")
    assert "outside the output folder" in error["message"]


def test_malformed_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "graph.json"
    path.write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "gpu_executor", "run-graph", str(path), "--output-dir",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and json.loads(result.stdout)["error"] == "WORKFLOW_MALFORMED"


def test_custom_nodes_and_inputs(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGBA", (8, 8), (10, 20, 30, 64)).save(inputs / "in.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}},
        "3": {"class_type": "Number", "inputs": {"value": 5}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    }
    result = _run(tmp_path, graph, "--input-dir", str(inputs), "--custom-nodes", str(PACKS))
    assert result.returncode == 0, result.stderr
    saved = np.asarray(Image.open(result.stdout.split()[0]))
    assert tuple(saved[0, 0]) == (10, 20, 30)


# Recorded from a real ComfyUI 0.27 (shared/comfyui-transcripts/image_ok.jsonl): this graph's PNG, as served by
# GET /view, was 450 bytes with this sha256. Same nodes, same pixels, same PNG chunks and compression.
COMFYUI_IMAGE_OK_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 3368652}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "rec_image"}},
}
COMFYUI_IMAGE_OK_SHA256 = "03040e5074de5362daa3ac66110d87a473648f54fdac694f88cecdc9ffc46578"


def test_output_is_byte_identical_to_real_comfyui(tmp_path: Path) -> None:
    import hashlib

    result = _run(tmp_path, COMFYUI_IMAGE_OK_GRAPH)
    assert result.returncode == 0, result.stderr
    written = Path(result.stdout.split()[0])
    assert written.name == "rec_image_00001_.png"
    assert hashlib.sha256(written.read_bytes()).hexdigest() == COMFYUI_IMAGE_OK_SHA256


TRANSCRIPTS = ROOT.parent / "shared" / "comfyui-transcripts"


@pytest.mark.skipif(not (TRANSCRIPTS / "upload_and_loadimage.jsonl").exists(), reason="transcripts not beside the repo")
def test_loadimage_graph_is_byte_identical_to_real_comfyui(tmp_path: Path) -> None:
    """The recorded upload → LoadImage → ImageInvert → SaveImage run: identical only if the engine records
    LoadImage's IS_CHANGED in the embedded prompt the way ComfyUI does."""
    import base64
    import hashlib

    records = [json.loads(line) for line in (TRANSCRIPTS / "upload_and_loadimage.jsonl").read_text().splitlines()]
    upload = next(r for r in records if r["kind"] == "http_request" and r["path"] == "/upload/image")
    image = upload["body"]["multipart"]["image"]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / image["filename"]).write_bytes(base64.b64decode(image["b64"]))
    graph = next(r for r in records if r["kind"] == "http_request" and r["path"] == "/prompt")["body"]["prompt"]
    served = next(r["body"] for r in records if r["kind"] == "http_response" and isinstance(r.get("body"), dict)
                  and r["body"].get("binary") and r["body"].get("image", {}).get("magic") == "png")
    result = _run(tmp_path, graph, "--input-dir", str(inputs))
    assert result.returncode == 0, result.stderr
    data = Path(result.stdout.split()[0]).read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (served["length"], served["sha256"])
