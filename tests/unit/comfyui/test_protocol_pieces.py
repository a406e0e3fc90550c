"""Frame decoding, validation errors, output files, the model view and prompt ids of the ComfyUI backend."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_executor.comfyui.backend import ComfyUIConfig, catalog_hash, prompt_id_for
from gpu_executor.comfyui.frames import FrameError, Message, decode_binary, decode_text
from gpu_executor.comfyui.models import COMFYUI_FOLDERS, ModelView, extra_model_paths, without_tenant_models
from gpu_executor.comfyui.outputs import UnsafeOutputNameError, collect, file_outputs
from gpu_executor.comfyui.translate import WebsocketImage
from gpu_executor.comfyui.validation import validation_failure
from gpu_executor.engine.errors import NodeErrorType
from service_runtime.settings import Settings
from tests.fixtures.comfyui_replay.transcripts import read_transcript
from tests.unit.comfyui.recorded import frames, posted

pytestmark = pytest.mark.unit


def test_text_frames_decode_and_garbage_is_refused() -> None:
    assert decode_text('{"type": "executing", "data": {"node": "1"}}') == Message("executing", {"node": "1"})
    for bad in ("not json", "[]", '{"data": {}}'):
        with pytest.raises(FrameError):
            decode_text(bad)


def test_binary_frames_decode_both_preview_formats() -> None:
    metadata = next(f for f in frames("multi_output") if not isinstance(f, Message))
    assert (metadata.event_type, metadata.node_id, metadata.content_type) == (4, "7", "image/png")
    assert metadata.prompt_id is not None and metadata.data[:4] == b"\x89PNG"
    legacy = next(f for f in frames("interrupt") if not isinstance(f, Message))
    assert (legacy.event_type, legacy.prompt_id, legacy.node_id, legacy.content_type) == (1, None, None, "image/jpeg")
    for bad in (b"\x00\x00", struct.pack(">II", 9, 0) + b"x", struct.pack(">II", 4, 100) + b"{}",
                struct.pack(">II", 4, 2) + b"[]"):
        with pytest.raises(FrameError):
            decode_binary(bad)


def test_a_validation_answer_becomes_workflow_invalid_with_every_bad_input() -> None:
    body = next(r["body"] for r in read_transcript("validation_error") if r["kind"] == "http_response")
    failed = validation_failure(body["error"], body["node_errors"], posted("validation_error")["prompt"])
    assert failed.reason == "WORKFLOW_INVALID" and (failed.node_id, failed.class_type) == ("1", "EmptyImage")
    assert "Value 0 smaller than min of 1" in failed.message and "1 more" in failed.message
    errors = {(e.node_id, e.type, e.input_name) for e in failed.validation.all_errors()}
    assert errors == {("1", NodeErrorType.VALUE_SMALLER_THAN_MIN, "width"),
                      ("4", NodeErrorType.RETURN_TYPE_MISMATCH, "image")}
    assert failed.validation.node_errors["4"].dependent_outputs == ["5"]


def test_a_graph_level_refusal_is_workflow_invalid_too() -> None:
    failed = validation_failure({"type": "prompt_no_outputs", "message": "Prompt has no outputs"}, {}, {})
    assert failed.reason == "WORKFLOW_INVALID" and failed.node_id == ""
    assert failed.validation.graph_errors[0].type == NodeErrorType.PROMPT_NO_OUTPUTS


def test_output_files_of_any_kind_are_found_and_unsafe_names_refused() -> None:
    ui: dict[str, dict[str, Any]] = {
        "3": {"images": [{"filename": "a.png", "subfolder": "x/y", "type": "output"}], "animated": [False]},
        "8": {"video": [{"filename": "v.mp4", "subfolder": "", "type": "temp"}]},
          "9": {"3d": [{"filename": "mesh.glb", "type": "output"}], "text": ["hi"]}}
    found = [(o.ref.node_id, o.ref.kind, o.ref.subfolder, o.ref.filename, o.ref.type) for o in file_outputs(ui)]
    assert found == [("3", "images", "x/y", "a.png", "output"), ("8", "video", "", "v.mp4", "temp"),
                     ("9", "3d", "", "mesh.glb", "output")]
    for item in ({"filename": "../a.png"}, {"filename": "a/b.png"}, {"filename": "a.png", "subfolder": "../up"},
                 {"filename": ""}):
        with pytest.raises(UnsafeOutputNameError):
            file_outputs({"1": {"images": [item]}})


async def test_text_and_websocket_outputs_are_written_as_files(tmp_path: Path) -> None:
    downloads: list[tuple[str, str, str, Path]] = []

    async def download(filename: str, subfolder: str, kind: str, destination: Path) -> None:
        downloads.append((filename, subfolder, kind, destination))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(b"file")

    ui: dict[str, dict[str, Any]] = {"6": {"text": ["hello"]},
                                     "4": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]}}
    refs = await collect(ui, [WebsocketImage("7", "image/png", b"\x89PNG")], tmp_path / "out", tmp_path / "tmp",
                         download)
    assert [(r.node_id, r.kind, r.filename, r.type) for r in refs] == [
        ("4", "images", "t.png", "temp"), ("6", "text", "text_6_00001.txt", "output"),
        ("7", "websocket_images", "websocket_7_00001.png", "output")]
    assert downloads == [("t.png", "", "temp", tmp_path / "tmp" / "t.png")]
    assert (tmp_path / "out" / "text_6_00001.txt").read_text() == "hello"
    assert (tmp_path / "out" / "websocket_7_00001.png").read_bytes() == b"\x89PNG"


def test_the_extra_model_paths_file_names_both_roots_in_comfyui_layout(tmp_path: Path) -> None:
    document = yaml.safe_load(extra_model_paths(tmp_path / "models", tmp_path / "view"))
    assert document["comfymesh_models"]["base_path"] == str((tmp_path / "models").resolve())
    assert document["comfymesh_view"]["checkpoints"] == "checkpoints/"
    assert set(document["comfymesh_view"]) == {"base_path", *COMFYUI_FOLDERS}
    assert "comfymesh_models" not in yaml.safe_load(extra_model_paths(None, tmp_path / "view"))


def test_prefetch_finds_models_by_bare_or_folder_name_and_reports_missing(tmp_path: Path) -> None:
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "style.safetensors").write_bytes(b"x" * 10)
    view = ModelView(tmp_path / "models", tmp_path / "view", None)
    outcome = view.prefetch(("style.safetensors", "loras/style.safetensors"))
    assert [(m.folder, m.name, m.tier, m.size) for m in outcome.models] == [("loras", "style.safetensors", "disk",
                                                                             10)] * 2
    assert view.prefetch(("nope.safetensors", "style.safetensors")).missing == ("nope.safetensors",)
    assert view.prefetch(("../etc/passwd",)).missing == ("../etc/passwd",)


def test_prompt_ids_are_canonical_and_differ_per_attempt() -> None:
    first, again, retry = prompt_id_for("e1", 1), prompt_id_for("e1", 1), prompt_id_for("e1", 2)
    assert first == again != retry
    assert str(uuid.UUID(first)) == first


def test_the_catalog_hash_ignores_key_order() -> None:
    assert catalog_hash({"a": {"x": 1, "y": 2}}) == catalog_hash({"a": {"y": 2, "x": 1}}) != catalog_hash({})


def test_the_comfyui_engine_needs_a_checkout_or_a_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="COMFYMESH_COMFYUI_PATH"):
        ComfyUIConfig.from_settings(Settings(home=tmp_path, executor_engine="comfyui"), None)
    config = ComfyUIConfig.from_settings(Settings(home=tmp_path, executor_engine="comfyui", comfyui_path=tmp_path,
                                                  comfyui_extra_args="--cpu --preview-size '256'"), None)
    assert config.extra_args == ("--cpu", "--preview-size", "256") and config.home == (tmp_path / "comfyui").resolve()
    assert len(config.client_id) == 32


def test_the_executor_picks_its_engine_from_settings(tmp_path: Path) -> None:
    from gpu_executor.app import make_backend
    from gpu_executor.comfyui.backend import ComfyUIBackend
    from gpu_executor.worker.backend import ExecutionBackend
    from gpu_executor.worker.supervisor import WorkerSupervisor

    builtin: ExecutionBackend = make_backend(Settings(home=tmp_path))
    comfyui: ExecutionBackend = make_backend(Settings(home=tmp_path, executor_engine="comfyui",
                                                      comfyui_url="http://127.0.0.1:9/"))
    assert isinstance(builtin, WorkerSupervisor) and isinstance(comfyui, ComfyUIBackend)
    assert comfyui.config.url == "http://127.0.0.1:9" and comfyui.pid is None  # attached: no process of its own
    for engine in (builtin, comfyui):
        assert engine.ready is None and engine.restarts == 0 and not engine.starting and not engine.alive


def test_tenants_private_models_are_removed_from_the_catalog_in_both_combo_shapes() -> None:
    private = ["tenants/acme/mine.safetensors", "tenants\\acme\\win.safetensors"]
    catalog = {
        "CheckpointLoaderSimple": {"input": {"required": {
            "ckpt_name": [["shared.safetensors", *private], {"tooltip": "checkpoint"}]}}},
        "LoraLoader": {"input": {"required": {"model": ["MODEL"], "lora_name": [
            "COMBO", {"options": ["style.safetensors", *private], "multiselect": False}]}},
            "output_node": False},
        # Not a model input: a choice that looks like a tenant path is any other string there.
        "Note": {"input": {"optional": {"text": [["tenants/acme/notes.txt"]]}}},
        "Odd": "not a class definition",
    }
    cleaned = without_tenant_models(catalog)
    assert cleaned["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [
        ["shared.safetensors"], {"tooltip": "checkpoint"}]
    assert cleaned["LoraLoader"]["input"]["required"]["lora_name"] == [
        "COMBO", {"options": ["style.safetensors"], "multiselect": False}]
    assert cleaned["LoraLoader"]["input"]["required"]["model"] == ["MODEL"] and not cleaned["LoraLoader"][
        "output_node"]
    assert cleaned["Note"] == catalog["Note"] and cleaned["Odd"] == "not a class definition"
    assert "tenants/acme/mine.safetensors" in catalog["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]


def test_a_tenants_model_is_found_only_for_that_tenant(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "checkpoints" / "tenants" / "acme").mkdir(parents=True)
    (models / "checkpoints" / "tenants" / "acme" / "mine.safetensors").write_bytes(b"weights")
    view = ModelView(models, tmp_path / "view", None)
    assert view.tenant_model("mine.safetensors", "acme") == "tenants/acme/mine.safetensors"
    assert view.tenant_model("checkpoints/mine.safetensors", "acme") == "tenants/acme/mine.safetensors"
    for name, tenant in (("mine.safetensors", "other"), ("mine.safetensors", "default"), ("mine.safetensors", ""),
                         ("mine.safetensors", "../acme"), ("../tenants/acme/mine.safetensors", "x"),
                         ("absent.safetensors", "acme")):
        assert view.tenant_model(name, tenant) is None, (name, tenant)
