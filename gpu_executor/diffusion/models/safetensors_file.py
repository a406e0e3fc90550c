"""Safe model-file access: only safetensors files are opened, pickle-based checkpoints are refused unread.

`read_header` parses and validates the JSON header (keys, shapes, dtypes, ``__metadata__``) without touching the
tensor data; `load_tensors` / `SafetensorsFile` read tensors through the safetensors library. Nothing here ever calls
``torch.load`` or unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open

from gpu_executor.diffusion.models.errors import CorruptModelFile, UnsafeModelFormat

SAFE_SUFFIXES = frozenset({".safetensors", ".sft"})
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
PICKLE_REFUSAL = "pickle-based checkpoints can execute code when loaded and are refused; convert to .safetensors"

# safetensors' own limit for the JSON header; anything bigger is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000

DTYPE_SIZES: Mapping[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

TORCH_DTYPES: Mapping[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] = field(default_factory=dict)
    header_size: int = 0
    file_size: int = 0

    def shapes(self, prefix: str = "") -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items() if k.startswith(prefix)}

    def keys(self) -> Iterable[str]:
        return self.tensors.keys()


def _refuse_suffix(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        return
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeModelFormat(f"{path.name}: {PICKLE_REFUSAL}")
    raise UnsafeModelFormat(f"{path.name}: only .safetensors/.sft model files are loaded ({PICKLE_REFUSAL})")


def _sniff_foreign(head: bytes, path: Path) -> None:
    """Refuse files whose first bytes identify another format (torch zip archives, raw pickles)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        raise UnsafeModelFormat(f"{path.name}: a zip (torch.save) archive, not safetensors; {PICKLE_REFUSAL}")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise UnsafeModelFormat(f"{path.name}: a pickle stream, not safetensors; {PICKLE_REFUSAL}")


def read_header(path: PathLike) -> SafetensorsHeader:
    """Read and validate the header of a .safetensors/.sft file without loading tensor data.

    Raises `UnsafeModelFormat` for anything that is not a safetensors file and `CorruptModelFile` for a safetensors
    file whose header or data section is truncated or inconsistent.
    """
    p = Path(path)
    _refuse_suffix(p)
    try:
        file_size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            _sniff_foreign(head, p)
            if len(head) < 8:
                raise CorruptModelFile(f"{p.name}: {file_size} bytes is too short for a safetensors header")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise UnsafeModelFormat(f"{p.name}: not a safetensors file (header length {n}); {PICKLE_REFUSAL}")
            raw = f.read(n)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptModelFile(f"{p.name}: cannot read the file: {exc}") from exc
    if len(raw) < n:
        if raw[:1] in (b"{", b""):
            raise CorruptModelFile(
                f"{p.name}: truncated safetensors header ({len(raw)} of {n} header bytes present, "
                f"file is {file_size} bytes)"
            )
        raise UnsafeModelFormat(f"{p.name}: not a safetensors file; {PICKLE_REFUSAL}")
    if not raw.lstrip(b" ").startswith(b"{"):
        raise UnsafeModelFormat(f"{p.name}: not a safetensors file; {PICKLE_REFUSAL}")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptModelFile(f"{p.name}: the safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CorruptModelFile(f"{p.name}: the safetensors header is not a JSON object")
    metadata_raw = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise CorruptModelFile(f"{p.name}: __metadata__ is not an object")
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata_raw.items()}
    data_size = file_size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for key, entry in doc.items():
        tensors[key] = _tensor_info(p, key, entry, data_size)
    return SafetensorsHeader(path=p, tensors=tensors, metadata=metadata, header_size=n, file_size=file_size)


def _tensor_info(p: Path, key: str, entry: Any, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CorruptModelFile(f"{p.name}: header entry {key!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if (
        not isinstance(dtype, str)
        or not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
    ):
        raise CorruptModelFile(f"{p.name}: malformed header entry for {key!r}: {entry!r}")
    begin, end = offsets
    info = TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(begin, end))
    if not 0 <= begin <= end:
        raise CorruptModelFile(f"{p.name}: bad data offsets for {key!r}: {offsets}")
    size = DTYPE_SIZES.get(dtype)
    if size is not None and end - begin != info.numel * size:
        raise CorruptModelFile(f"{p.name}: {key!r} declares {dtype}{list(shape)} but spans {end - begin} bytes")
    if end > data_size:
        raise CorruptModelFile(
            f"{p.name}: truncated file: {key!r} ends at byte {end} of the data section, which has {data_size} bytes"
        )
    return info


class SafetensorsFile:
    """An open safetensors file: validated header plus lazy per-tensor reads (context manager)."""

    def __init__(self, path: PathLike, *, device: str | torch.device = "cpu") -> None:
        self.header = read_header(path)
        self.path = self.header.path
        self._device = str(device)
        self._handle: Any = None

    def __enter__(self) -> SafetensorsFile:
        self._open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> Any:
        if self._handle is None:
            ctx: Any = safe_open(str(self.path), framework="pt", device=self._device)
            self._ctx = ctx
            self._handle = self._ctx.__enter__()
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._ctx.__exit__(None, None, None)
            self._handle = None

    def keys(self) -> Iterable[str]:
        return self.header.tensors.keys()

    def __contains__(self, key: object) -> bool:
        return key in self.header.tensors

    def shapes(self, prefix: str = "") -> dict[str, tuple[int, ...]]:
        return self.header.shapes(prefix)

    def get(self, key: str) -> torch.Tensor:
        if key not in self.header.tensors:
            raise KeyError(key)
        tensor: torch.Tensor = self._open().get_tensor(key)
        return tensor

    def iter_prefix(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.header.tensors:
            if key.startswith(prefix):
                yield key, self.get(key)


def load_tensors(
    path: PathLike,
    *,
    prefix: str | tuple[str, ...] = "",
    strip_prefix: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Load tensors (all, or only those whose key starts with ``prefix``) with safetensors.

    ``dtype`` converts floating-point tensors only. With ``strip_prefix`` the matched prefix is removed from keys.
    """
    prefixes = (prefix,) if isinstance(prefix, str) else prefix
    out: dict[str, torch.Tensor] = {}
    with SafetensorsFile(path, device=device) as f:
        for key in f.header.tensors:
            match = next((pre for pre in prefixes if key.startswith(pre)), None)
            if match is None:
                continue
            t = f.get(key)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[key[len(match) :] if strip_prefix else key] = t
    return out
