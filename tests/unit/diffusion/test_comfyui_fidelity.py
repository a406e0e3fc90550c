"""Fidelity against a real ComfyUI 0.27 run (shared/comfyui-transcripts/ksampler_progress.jsonl).

The recording ran CheckpointLoaderSimple → CLIPTextEncode ×2 → KSampler (seed 42, 6 steps, euler, cfg 7) →
VAEDecode on `tiny_sd15_l1.safetensors`, built by shared/tools/make_tiny_sd15.py (--levels 1 --fp16), and sent a
latent2rgb preview of the denoised latent after every step. We rebuild the same checkpoint with the same script,
run the same graph, and compare our denoised latent at every step with ComfyUI's previews: they agree within JPEG
error, so noise, tokenization, text encoding, UNet, CFG and the sampler follow ComfyUI's numerics.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_executor.diffusion.models.testing import cache_dir
from gpu_executor.engine import runtime
from gpu_executor.engine.engine import Engine, ExecutionRequest
from gpu_executor.engine.events import CollectingSink, Succeeded
from gpu_executor.engine.registry import build_registry

pytestmark = [pytest.mark.unit, pytest.mark.slow]
SHARED = Path(__file__).resolve().parents[4] / "shared"
TRANSCRIPT = SHARED / "comfyui-transcripts" / "ksampler_progress.jsonl"
GENERATOR = SHARED / "tools" / "make_tiny_sd15.py"
SD15_LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                                [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])


def _recording() -> tuple[dict[str, Any], list[np.ndarray]]:
    graph: dict[str, Any] = {}
    previews = []
    for line in TRANSCRIPT.read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "http_request" and entry["method"] == "POST" and entry["path"] == "/prompt":
            graph = entry["body"]["prompt"]
        frame = entry.get("frame")
        if entry["kind"] == "ws_recv" and isinstance(frame, dict) and frame.get("binary"):
            raw = base64.b64decode(frame["b64"])
            image = np.asarray(Image.open(io.BytesIO(raw[8 + frame["metadata_length"]:]))).astype(int)
            previews.append(image[32::64, 32::64])  # 8×8 latent pixels, upscaled ×64 by ComfyUI
    return graph, previews


@pytest.mark.skipif(not TRANSCRIPT.exists() or not GENERATOR.exists(), reason="shared recordings not beside the repo")
def test_every_sampler_step_matches_comfyui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = cache_dir() / "comfyui-recorded-tiny_sd15_l1.safetensors"
    if not checkpoint.exists():
        staging = checkpoint.with_suffix(".partial")
        subprocess.run([sys.executable, str(GENERATOR), str(staging), "--levels", "1", "--fp16"], check=True,
                       capture_output=True, timeout=600)
        staging.rename(checkpoint)
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "tiny_sd15_l1.safetensors").symlink_to(checkpoint)

    import gpu_executor.nodes.stable_diffusion as sd

    denoised: list[torch.Tensor] = []
    original = sd._preview
    monkeypatch.setattr(sd, "_preview", lambda d: (denoised.append(d.clone()), original(d))[1])
    graph, previews = _recording()
    token = runtime.bind_models_root(tmp_path / "models")
    try:
        final = Engine(build_registry()).execute(
            ExecutionRequest("fidelity", graph, tmp_path, tmp_path, tmp_path), CollectingSink())
    finally:
        runtime._model_dirs.reset(token)
    assert isinstance(final, Succeeded)
    assert len(denoised) == len(previews) == 6
    for step, (ours, theirs) in enumerate(zip(denoised, previews, strict=True), start=1):
        rgb = torch.einsum("chw,cr->hwr", ours[0].float(), SD15_LATENT_RGB)
        pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).int().numpy()
        difference = np.abs(pixels - theirs)
        assert difference.mean() < 4 and difference.max() <= 16, f"step {step}: {difference.mean():.2f}"
