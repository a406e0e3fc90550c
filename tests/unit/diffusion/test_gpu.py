"""On a CUDA device (a lent GPU machine): the same txt2img graph runs in fp16 and stays deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_executor.engine.engine import Engine
from tests.unit.diffusion.test_sd_workflows import TXT2IMG, pixels, run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_txt2img_on_cuda_is_deterministic(sd_engine: Engine, tmp_path: Path) -> None:
    from gpu_executor.diffusion.handles import model_store

    assert model_store().placement.device.type == "cuda"
    first = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    sd_engine.cache.clear()
    second = pixels(tmp_path, run(sd_engine, tmp_path, TXT2IMG))
    assert first.shape == (64, 64, 3) and np.array_equal(first, second)
