"""A tiny Stable Diffusion 1.x checkpoint in the real single-file layout (random weights, real CLIP-L shape), built
once into the test model cache and linked into a ComfyUI-style models/ directory; tiny SD2 (eps, v) and SDXL (base,
refiner) checkpoints are linked next to it by `sd2_sdxl_checkpoints` for the tests that use them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_executor.diffusion.models.testing import (
    make_tiny_controlnet,
    make_tiny_lora,
    make_tiny_sd1_checkpoint,
    make_tiny_sd2_checkpoint,
    make_tiny_sdxl_checkpoint,
)
from gpu_executor.engine import runtime
from gpu_executor.engine.engine import Engine
from gpu_executor.engine.registry import build_registry


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for folder in ("checkpoints", "loras", "controlnet"):
        (root / folder).mkdir()
    checkpoint = make_tiny_sd1_checkpoint(seed=0)
    (root / "checkpoints" / "tiny_sd15.safetensors").symlink_to(checkpoint)
    make_tiny_lora(root / "loras" / "tiny_lora.safetensors", checkpoint, rank=4, seed=1)
    make_tiny_controlnet(root / "controlnet" / "tiny_cn.safetensors", checkpoint_path=checkpoint, seed=2)
    return root


@pytest.fixture(scope="session")
def sd_engine(models_root: Path) -> Iterator[Engine]:
    token = runtime.bind_models_root(models_root)
    try:
        yield Engine(build_registry())
    finally:
        runtime._model_dirs.reset(token)


@pytest.fixture(scope="session")
def sd2_sdxl_checkpoints(models_root: Path) -> dict[str, str]:
    """Checkpoint names (in `models_root`/checkpoints) by family: "sd2", "sd2_v", "sdxl", "sdxl_refiner". Built
    only when a test asks, so the SD1 tests do not pay for them. The SD2 pair shares every weight but the
    v-prediction probe."""
    files = {
        "sd2": ("tiny_sd2.safetensors", lambda: make_tiny_sd2_checkpoint(seed=0)),
        "sd2_v": ("tiny_sd2_v.safetensors", lambda: make_tiny_sd2_checkpoint(seed=0, v_prediction=True)),
        "sdxl": ("tiny_sdxl.safetensors", lambda: make_tiny_sdxl_checkpoint(seed=0)),
        "sdxl_refiner": ("tiny_sdxl_refiner.safetensors", lambda: make_tiny_sdxl_checkpoint(seed=0, refiner=True)),
    }
    names: dict[str, str] = {}
    for family, (name, build) in files.items():
        link = models_root / "checkpoints" / name
        if not link.exists():
            link.symlink_to(build())
        names[family] = name
    return names
