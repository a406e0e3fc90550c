"""Stable Diffusion graphs on the built-in engine with a tiny real-layout checkpoint: txt2img, img2img,
inpainting, LoRA, CLIP skip, ControlNet, every sampler and scheduler, determinism, progress and interrupts."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gpu_executor.diffusion.sampling import SAMPLER_NAMES, SCHEDULER_NAMES
from gpu_executor.engine.engine import Engine, ExecutionRequest
from gpu_executor.engine.events import Cancelled, CollectingSink, NodeProgress, Preview, Succeeded

pytestmark = [pytest.mark.unit, pytest.mark.slow]

TXT2IMG: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.2) cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd"}},
}


def run(engine: Engine, tmp_path: Path, graph: dict[str, Any], inputs: dict[str, Path] | None = None,
        interrupt: threading.Event | None = None, sink: CollectingSink | None = None) -> Any:
    for name in ("out", "temp", "in"):
        (tmp_path / name).mkdir(exist_ok=True)
    request = ExecutionRequest("t", graph, tmp_path / "out", tmp_path / "temp", tmp_path / "in", inputs or {})
    return engine.execute(request, sink or CollectingSink(), interrupt)


def pixels(tmp_path: Path, final: Any) -> np.ndarray:
    assert isinstance(final, Succeeded), final
    ref = final.outputs[-1]
    return np.asarray(Image.open(tmp_path / "out" / ref.subfolder / ref.filename))


def with_inputs(graph: dict[str, Any], node: str, **inputs: Any) -> dict[str, Any]:
    changed = copy.deepcopy(graph)
    changed[node]["inputs"].update(inputs)
    return changed


def test_txt2img_with_progress_and_previews(sd_engine: Engine, tmp_path: Path) -> None:
    sink = CollectingSink()
    image = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG, sink=sink))
    assert image.shape == (64, 64, 3)
    assert [(e.node_id, e.value, e.max) for e in sink.of(NodeProgress)] == [("3", i, 4) for i in range(1, 5)]
    assert sink.of(Preview) and sink.of(Preview)[0].content_type == "image/jpeg"


def test_same_seed_same_bytes_new_seed_new_image(sd_engine: Engine, tmp_path: Path) -> None:
    first = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    sd_engine.cache.clear()  # really run it again, not from the output cache
    again = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    other = pixels(tmp_path, run(sd_engine, tmp_path, with_inputs(TXT2IMG, "3", seed=43)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_new_seed_reruns_only_the_sampler_and_what_follows(sd_engine: Engine, tmp_path: Path) -> None:
    run(sd_engine, tmp_path, TXT2IMG)
    sink = CollectingSink()
    run(sd_engine, tmp_path, with_inputs(TXT2IMG, "3", seed=7), sink=sink)
    final = sink.terminal
    assert isinstance(final, Succeeded)
    ran = {t.node_id for t in final.timings if not t.cached}
    assert ran == {"3", "8", "9"}


def test_img2img_and_inpainting(sd_engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "src.png"
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    alpha = np.full((64, 64, 1), 255, dtype=np.uint8)
    alpha[16:48, 16:48] = 0  # the transparent square becomes LoadImage's mask (1 = repaint)
    Image.fromarray(np.concatenate([gradient, alpha], axis=2), "RGBA").save(source)
    img2img = copy.deepcopy(TXT2IMG)
    img2img["10"] = {"class_type": "LoadImage", "inputs": {"image": "src.png"}}
    img2img["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    img2img["3"]["inputs"].update(latent_image=["11", 0], denoise=0.5)
    result = pixels(tmp_path, run(sd_engine, tmp_path, img2img, {"src.png": source}))
    assert result.shape == (64, 64, 3)

    inpaint = copy.deepcopy(img2img)
    inpaint["11"] = {"class_type": "VAEEncodeForInpaint",
                     "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 0}}
    inpaint["3"]["inputs"]["denoise"] = 1.0
    painted = pixels(tmp_path, run(sd_engine, tmp_path, inpaint, {"src.png": source}))
    assert painted.shape == (64, 64, 3) and not np.array_equal(painted, result)


def test_lora_changes_the_output_and_strength_zero_does_not(sd_engine: Engine, tmp_path: Path) -> None:
    base = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    graph = copy.deepcopy(TXT2IMG)
    graph["12"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                          "lora_name": "tiny_lora.safetensors",
                                                          "strength_model": 1.0, "strength_clip": 1.0}}
    graph["3"]["inputs"]["model"] = ["12", 0]
    graph["6"]["inputs"]["clip"] = ["12", 1]
    graph["7"]["inputs"]["clip"] = ["12", 1]
    with_lora = pixels(tmp_path, run(sd_engine, tmp_path, graph))
    zero = pixels(tmp_path, run(sd_engine, tmp_path, with_inputs(graph, "12", strength_model=0.0, strength_clip=0.0)))
    after = pixels(tmp_path, run(sd_engine, tmp_path, with_inputs(TXT2IMG, "3", cfg=7.0001)))
    assert not np.array_equal(base, with_lora)
    assert np.array_equal(base, zero)
    assert after.shape == base.shape  # the base weights were restored for graphs without the LoRA


def test_clip_skip_changes_the_conditioning(sd_engine: Engine, tmp_path: Path) -> None:
    base = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    graph = copy.deepcopy(TXT2IMG)
    graph["13"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}}
    graph["6"]["inputs"]["clip"] = ["13", 0]
    graph["7"]["inputs"]["clip"] = ["13", 0]
    skipped = pixels(tmp_path, run(sd_engine, tmp_path, graph))
    last = pixels(tmp_path, run(sd_engine, tmp_path, with_inputs(graph, "13", stop_at_clip_layer=-1)))
    assert not np.array_equal(base, skipped)
    assert np.array_equal(base, last)  # -1 is the last layer: the default


def test_controlnet_changes_the_output(sd_engine: Engine, tmp_path: Path) -> None:
    base = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    graph = copy.deepcopy(TXT2IMG)
    graph["14"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny_cn.safetensors"}}
    graph["15"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": 0xFFFFFF}}
    graph["16"] = {"class_type": "ControlNetApplyAdvanced",
                   "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["14", 0],
                              "image": ["15", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    graph["3"]["inputs"].update(positive=["16", 0], negative=["16", 1])
    controlled = pixels(tmp_path, run(sd_engine, tmp_path, graph))
    assert not np.array_equal(base, controlled)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs(sd_engine: Engine, tmp_path: Path, sampler: str) -> None:
    image = pixels(tmp_path, run(sd_engine, tmp_path, with_inputs(TXT2IMG, "3", sampler_name=sampler, steps=2)))
    assert image.shape == (64, 64, 3)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_runs(sd_engine: Engine, tmp_path: Path, scheduler: str) -> None:
    image = pixels(tmp_path, run(sd_engine, tmp_path, with_inputs(TXT2IMG, "3", scheduler=scheduler, steps=3)))
    assert image.shape == (64, 64, 3)


def test_interrupt_stops_at_the_next_sampler_step(sd_engine: Engine, tmp_path: Path) -> None:
    flag = threading.Event()

    class StopAtFirstStep(CollectingSink):
        def emit(self, event: Any) -> None:
            super().emit(event)
            if isinstance(event, NodeProgress):
                flag.set()

    sink = StopAtFirstStep()
    final = run(sd_engine, tmp_path, with_inputs(TXT2IMG, "3", steps=50, seed=99), interrupt=flag, sink=sink)
    assert isinstance(final, Cancelled) and final.node_id == "3"
    assert len(sink.of(NodeProgress)) == 1


def test_advanced_sampler_split_equals_one_run(sd_engine: Engine, tmp_path: Path) -> None:
    one = pixels(tmp_path, run(sd_engine, tmp_path, with_inputs(TXT2IMG, "3", steps=6)))
    split = copy.deepcopy(TXT2IMG)
    common = {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "noise_seed": 42, "steps": 6,
              "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}
    split["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "latent_image": ["5", 0], "start_at_step": 0, "end_at_step": 3,
        "return_with_leftover_noise": "enable"}}
    split["20"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "disable", "latent_image": ["3", 0], "start_at_step": 3, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    split["8"]["inputs"]["samples"] = ["20", 0]
    two = pixels(tmp_path, run(sd_engine, tmp_path, split))
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1


def test_separate_unet_vae_and_clip_loaders(sd_engine: Engine, models_root: Path, tmp_path: Path) -> None:
    """The same checkpoint file serves UNETLoader, VAELoader and CLIPLoader (they read their part of it) and
    gives the same picture as CheckpointLoaderSimple."""
    for folder in ("unet", "vae", "clip"):
        (models_root / folder).mkdir(exist_ok=True)
        link = models_root / folder / "tiny_sd15.safetensors"
        if not link.exists():
            link.symlink_to((models_root / "checkpoints" / "tiny_sd15.safetensors").resolve())
    base = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    graph = copy.deepcopy(TXT2IMG)
    graph["21"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd15.safetensors",
                                                          "weight_dtype": "default"}}
    graph["22"] = {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_sd15.safetensors"}}
    graph["23"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny_sd15.safetensors",
                                                          "type": "stable_diffusion"}}
    graph["3"]["inputs"]["model"] = ["21", 0]
    graph["8"]["inputs"]["vae"] = ["22", 0]
    graph["6"]["inputs"]["clip"] = ["23", 0]
    graph["7"]["inputs"]["clip"] = ["23", 0]
    del graph["4"]
    assert np.array_equal(base, pixels(tmp_path, run(sd_engine, tmp_path, graph)))


def test_tiled_decode_and_latent_noise_mask(sd_engine: Engine, tmp_path: Path) -> None:
    graph = copy.deepcopy(TXT2IMG)
    graph["5"]["inputs"].update(width=128, height=128)
    graph["8"] = {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["3", 0], "vae": ["4", 2],
                                                             "tile_size": 64, "overlap": 16}}
    tiled = pixels(tmp_path, run(sd_engine, tmp_path, graph))
    assert tiled.shape == (128, 128, 3)

    masked = copy.deepcopy(TXT2IMG)
    masked["30"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    masked["31"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": ["30", 0]}}
    masked["3"]["inputs"]["latent_image"] = ["31", 0]
    # A zero mask keeps the whole (empty) latent: the decoded image is what an all-zero latent decodes to.
    kept = pixels(tmp_path, run(sd_engine, tmp_path, masked))
    zero = copy.deepcopy(TXT2IMG)
    zero["8"]["inputs"]["samples"] = ["5", 0]
    assert np.array_equal(kept, pixels(tmp_path, run(sd_engine, tmp_path, zero)))
