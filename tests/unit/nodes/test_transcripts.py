"""The nodes against what a real ComfyUI 0.27 server produced (shared/comfyui-transcripts, recorded over HTTP).

The recordings hold the PNGs' sha256/length as served by /view, the uploaded input image itself, and the
SaveImageWebsocket PNG in full; the graphs are re-run here node by node and compared byte for byte.

ComfyUI adds `"is_changed": [value]` to every node of the prompt that has IS_CHANGED before running it, and
SaveImage embeds that mutated prompt; the expected PNGs are rebuilt with the same addition.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_executor.nodes import NODE_CLASS_MAPPINGS
from tests.unit.nodes.conftest import Rig

pytestmark = pytest.mark.unit

TRANSCRIPTS = Path(__file__).resolve().parents[3] / "shared" / "comfyui-transcripts"
if not TRANSCRIPTS.is_dir():  # the checkout's shared/ may live beside it
    TRANSCRIPTS = Path(__file__).resolve().parents[4] / "shared" / "comfyui-transcripts"


def records(name: str) -> list[dict[str, Any]]:
    path = TRANSCRIPTS / name
    if not path.is_file():
        pytest.skip(f"recording {path} not available")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def posted_prompt(recs: list[dict[str, Any]]) -> dict[str, Any]:
    (body,) = [r["body"] for r in recs if r["kind"] == "http_request" and r["path"] == "/prompt"]
    prompt: dict[str, Any] = body["prompt"]
    return prompt


def served_files(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """/view responses by file name: {"length", "sha256", "image": {...}}."""
    out = {}
    for r in recs:
        body = r.get("body")
        if r["kind"] == "http_response" and isinstance(body, dict) and body.get("binary"):
            name = r["headers"]["content-disposition"].split('filename="')[1].rstrip('"')
            out[name] = body
    return out


def saved_file(rig: Rig, entry: dict[str, str]) -> bytes:
    folder = rig.runtime.output_dir if entry["type"] == "output" else rig.runtime.temp_dir
    return (folder / entry["subfolder"] / entry["filename"]).read_bytes()


def run(class_type: str, **inputs: Any) -> Any:
    node = NODE_CLASS_MAPPINGS[class_type]()
    return getattr(node, node.FUNCTION)(**inputs)


def test_image_ok_png_is_byte_identical(rig: Rig) -> None:
    recs = records("image_ok.jsonl")
    prompt = posted_prompt(recs)
    (image,) = run("EmptyImage", **prompt["1"]["inputs"])
    (inverted,) = run("ImageInvert", image=image)
    result = run("SaveImage", images=inverted, filename_prefix=prompt["3"]["inputs"]["filename_prefix"], prompt=prompt)
    (entry,) = result["ui"]["images"]
    assert entry == {"filename": "rec_image_00001_.png", "subfolder": "", "type": "output"}
    data = saved_file(rig, entry)
    served = served_files(recs)["rec_image_00001_.png"]
    assert (len(data), hashlib.sha256(data).hexdigest()) == (served["length"], served["sha256"])


def test_uploaded_rgba_load_invert_save_is_byte_identical(rig: Rig) -> None:
    recs = records("upload_and_loadimage.jsonl")
    (upload,) = [r for r in recs if r["kind"] == "http_request" and r["path"] == "/upload/image"]
    uploaded = upload["body"]["multipart"]["image"]
    rig.add_input(uploaded["filename"], base64.b64decode(uploaded["b64"]))
    prompt = posted_prompt(recs)

    image, mask = run("LoadImage", **prompt["1"]["inputs"])
    # the uploaded image: left half opaque red, right half blue at alpha 128
    assert image.shape == (1, 32, 32, 3) and mask.shape == (1, 32, 32)
    assert image[0, :, :16].eq(torch.tensor([1.0, 0.0, 0.0])).all()
    assert image[0, :, 16:].eq(torch.tensor([0.0, 0.0, 1.0])).all()
    assert mask[0, :, :16].eq(0).all() and mask[0, :, 16:].eq(1.0 - np.float32(128) / np.float32(255)).all()

    (inverted,) = run("ImageInvert", image=image)
    embedded = copy.deepcopy(prompt)
    embedded["1"]["is_changed"] = [NODE_CLASS_MAPPINGS["LoadImage"].IS_CHANGED(**prompt["1"]["inputs"])]
    result = run("SaveImage", images=inverted, filename_prefix="rec_upload", prompt=embedded)
    data = saved_file(rig, result["ui"]["images"][0])
    served = served_files(recs)["rec_upload_00001_.png"]
    assert (len(data), hashlib.sha256(data).hexdigest()) == (served["length"], served["sha256"])


def test_multi_output_pixels_match_the_websocket_png(rig: Rig) -> None:
    recs = records("multi_output.jsonl")
    prompt = posted_prompt(recs)
    (frame,) = [r["frame"] for r in recs if isinstance(r.get("frame"), dict) and r["frame"].get("binary")]
    raw = base64.b64decode(frame["b64"])
    metadata_length = int.from_bytes(raw[4:8], "big")
    with Image.open(io.BytesIO(raw[8 + metadata_length :])) as png:
        comfy_pixels = np.asarray(png.convert("RGB"))

    (image,) = run("EmptyImage", **prompt["1"]["inputs"])
    (inverted,) = run("ImageInvert", image=image)
    saved = run("SaveImage", images=inverted, filename_prefix="rec_multi", prompt=prompt)
    preview = run("PreviewImage", images=inverted, prompt=prompt)
    for result in (saved, preview):
        with Image.open(io.BytesIO(saved_file(rig, result["ui"]["images"][0]))) as png:
            np.testing.assert_array_equal(np.asarray(png), comfy_pixels)
    assert saved["ui"]["images"][0]["filename"] in served_files(recs)


def test_escape_error_message_matches_comfyui(rig: Rig) -> None:
    recs = records("runtime_error.jsonl")
    prompt = posted_prompt(recs)
    (error,) = [
        r["frame"]["data"]
        for r in recs
        if isinstance(r.get("frame"), dict) and r["frame"].get("type") == "execution_error"
    ]
    (image,) = run("EmptyImage", **prompt["1"]["inputs"])
    with pytest.raises(Exception) as caught:  # noqa: PT011 - ComfyUI raises a bare Exception
        run("SaveImage", images=image, filename_prefix=prompt["2"]["inputs"]["filename_prefix"], prompt=prompt)
    assert type(caught.value) is Exception
    assert error["exception_type"] == "Exception"
    root = str(rig.runtime.output_dir.parent)  # the recording's <rec>, with output_dir = <rec>/output
    rig_output = rig.runtime.output_dir.name
    recorded = error["exception_message"].replace("<rec>/output", f"<rec>/{rig_output}")
    assert str(caught.value).replace(root, "<rec>") + "\n" == recorded
