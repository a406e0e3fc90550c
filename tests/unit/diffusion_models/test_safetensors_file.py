"""Only safetensors files are opened: pickle-based checkpoints are refused without being unpickled, damaged files
fail with a clear error, and headers are read without loading tensors."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gpu_executor.diffusion.models.controlnet import load_controlnet
from gpu_executor.diffusion.models.errors import CorruptModelFile, ModelFileError, UnsafeModelFormat
from gpu_executor.diffusion.models.loader import load_checkpoint, load_clip, load_unet, load_vae
from gpu_executor.diffusion.models.lora import load_lora, lora_info
from gpu_executor.diffusion.models.safetensors_file import (
    PICKLE_REFUSAL,
    SafetensorsFile,
    load_tensors,
    read_header,
)

pytestmark = pytest.mark.unit


class _TouchOnUnpickle:
    """Unpickling this object calls ``Path.touch(marker)``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[Path]]:
        return (Path.touch, (self.marker,))


LOADERS: dict[str, Callable[[Path], object]] = {
    "read_header": read_header,
    "load_tensors": load_tensors,
    "load_checkpoint": load_checkpoint,
    "load_unet": load_unet,
    "load_vae": load_vae,
    "load_clip": load_clip,
    "load_lora": load_lora,
    "lora_info": lora_info,
    "load_controlnet": load_controlnet,
}


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)


def test_payload_really_executes_when_unpickled(tmp_path: Path) -> None:
    """Control: the payload used below does create its marker when something unpickles it."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(marker)))  # noqa: S301 - deliberate, proves the payload works
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_pickle_checkpoints_are_refused_unopened(tmp_path: Path, suffix: str, loader: str, no_torch_load: None) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / f"model{suffix}"
    if suffix in (".ckpt", ".pt"):
        torch.save({"state_dict": _TouchOnUnpickle(marker)}, evil)  # a real torch zip checkpoint
    else:
        evil.write_bytes(pickle.dumps(_TouchOnUnpickle(marker), protocol=2))  # a raw pickle stream
    with pytest.raises(UnsafeModelFormat, match="pickle-based checkpoints can execute code"):
        LOADERS[loader](evil)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["zip", "pickle", "garbage"])
def test_non_safetensors_content_behind_a_safetensors_name_is_refused(
    tmp_path: Path, kind: str, no_torch_load: None
) -> None:
    marker = tmp_path / "pwned"
    disguised = tmp_path / "model.safetensors"
    if kind == "zip":
        torch.save({"x": _TouchOnUnpickle(marker)}, disguised)
    elif kind == "pickle":
        disguised.write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    else:
        disguised.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(UnsafeModelFormat) as err:
        load_checkpoint(disguised)
    assert PICKLE_REFUSAL in str(err.value)
    assert not marker.exists()


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    save_file({"a": torch.zeros(1)}, f)
    with pytest.raises(UnsafeModelFormat):
        read_header(f)


def _write(tmp_path: Path, name: str = "m.safetensors") -> Path:
    path = tmp_path / name
    save_file(
        {"model.a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "vae.b": torch.ones(4, dtype=torch.float16)},
        path,
        metadata={"modelspec.architecture": "test"},
    )
    return path


def test_header_is_read_without_loading_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "m.sft")
    import gpu_executor.diffusion.models.safetensors_file as sf

    monkeypatch.setattr(sf, "safe_open", lambda *a, **k: pytest.fail("the header read must not open tensors"))
    h = read_header(path)
    assert h.shapes() == {"model.a": (2, 3), "vae.b": (4,)}
    assert {k: v.dtype for k, v in h.tensors.items()} == {"model.a": "F32", "vae.b": "F16"}
    assert h.metadata == {"modelspec.architecture": "test"}
    assert h.shapes("vae.") == {"vae.b": (4,)}


def test_load_tensors_by_prefix(tmp_path: Path) -> None:
    path = _write(tmp_path)
    got = load_tensors(path, prefix="model.", strip_prefix=True, dtype=torch.float64)
    assert list(got) == ["a"]
    assert got["a"].dtype == torch.float64
    assert torch.equal(got["a"], torch.arange(6, dtype=torch.float64).reshape(2, 3))
    with SafetensorsFile(path) as f:
        assert "vae.b" in f
        assert f.get("vae.b").dtype == torch.float16


def test_truncated_header_fails_clearly(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: 8 + n // 2])
    with pytest.raises(CorruptModelFile, match="truncated safetensors header"):
        load_checkpoint(cut)
    with pytest.raises(CorruptModelFile):
        read_header(cut)


def test_truncated_data_and_short_files_fail_clearly(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-3])
    with pytest.raises(CorruptModelFile, match="truncated file"):
        load_checkpoint(cut)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    with pytest.raises(CorruptModelFile):
        read_header(tiny)


def test_inconsistent_header_is_rejected(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(CorruptModelFile, match="spans 8 bytes"):
        read_header(bad)
    assert issubclass(CorruptModelFile, ModelFileError) and issubclass(UnsafeModelFormat, ModelFileError)
