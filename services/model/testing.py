"""Safetensors files for tests and benchmarks, written from key → shape layouts without numpy or torch: the real
header format (8-byte length, JSON with contiguous offsets, padded to 8 bytes like the safetensors library) and
tensor data that is zeros, pseudo-random, or given bytes per tensor."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from services.model.safetensors_header import DTYPE_BITS

Layout = Mapping[str, tuple[int, ...]]


def header_bytes(layout: Layout, *, dtype: str = "F16", dtypes: Mapping[str, str] | None = None,
                 metadata: Mapping[str, str] | None = None) -> tuple[bytes, list[tuple[str, int]]]:
    """The length prefix plus JSON header, and (name, byte size) of each tensor in data order."""
    doc: dict[str, object] = {}
    if metadata is not None:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    order: list[tuple[str, int]] = []
    for name in sorted(layout):
        shape = layout[name]
        tensor_dtype = (dtypes or {}).get(name, dtype)
        size = math.prod(shape) * DTYPE_BITS[tensor_dtype] // 8
        doc[name] = {"dtype": tensor_dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        order.append((name, size))
        offset += size
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, order


def chunks(layout: Layout, *, dtype: str = "F16", dtypes: Mapping[str, str] | None = None,
           metadata: Mapping[str, str] | None = None, data: Mapping[str, bytes] | None = None,
           fill: str = "zeros", block: int = 4 << 20) -> Iterator[bytes]:
    """The file's bytes, in blocks: header, then each tensor (its `data` bytes when given, else `fill`)."""
    head, order = header_bytes(layout, dtype=dtype, dtypes=dtypes, metadata=metadata)
    yield head
    zeros = bytes(block)
    noise = os.urandom(block) if fill == "random" else zeros
    for name, size in order:
        given = (data or {}).get(name)
        if given is not None:
            if len(given) != size:
                raise ValueError(f"{name}: {len(given)} bytes given, {size} needed")
            yield given
            continue
        left = size
        while left:
            step = min(left, block)
            yield noise[:step]
            left -= step


def safetensors_bytes(layout: Layout, **kwargs: object) -> bytes:
    return b"".join(chunks(layout, **kwargs))  # type: ignore[arg-type]


def write_safetensors(path: str | os.PathLike[str], layout: Layout, **kwargs: object) -> Path:
    target = Path(path)
    with target.open("wb") as f:
        for block in chunks(layout, **kwargs):  # type: ignore[arg-type]
            f.write(block)
    return target


def blob_layout(size_bytes: int, *, tensor_bytes: int = 64 << 20) -> dict[str, tuple[int, ...]]:
    """F16 tensors adding up to about `size_bytes` (a benchmark file of a given size)."""
    layout: dict[str, tuple[int, ...]] = {}
    left, i = max(2, size_bytes), 0
    while left >= 2:
        elements = min(left, tensor_bytes) // 2
        layout[f"blob.{i:05d}.weight"] = (elements,)
        left -= elements * 2
        i += 1
    return layout
