"""What the supervised ComfyUI process inherits from the executor."""

from __future__ import annotations

import pytest

from gpu_executor.comfyui.process import comfyui_environment

pytestmark = pytest.mark.unit


def test_comfyui_gets_no_platform_secrets_and_its_own_directory_on_sys_path() -> None:
    parent = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0", "PYTHONSAFEPATH": "1", "HOME": "/var/lib/comfymesh",
              "COMFYMESH_SECRET_KEY": "s3cret", "COMFYMESH_EXECUTOR_API_KEY": "cm_key", "COMFYMESH_S3_SECRET_KEY": "x"}
    assert comfyui_environment(parent) == {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0",
                                           "HOME": "/var/lib/comfymesh"}
