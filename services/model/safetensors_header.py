"""Safetensors validation on a byte stream: nothing is ever unpickled, and no tensor is ever materialised.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (`{"name": {"dtype", "shape",
"data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}`), then the data section. `StreamValidator` is fed
the file's bytes in order (an upload stream, an object, an HTTP body) and refuses it as soon as it can:

* the first bytes are sniffed: pickle streams (protocol 2+, which covers every `torch.save` format), zip archives
  (torch's default `.pt`/`.ckpt` container, numpy `.npz`) and numpy `.npy` files are MODEL_FORMAT_UNSAFE; anything
  else that is not shaped like a safetensors header (N within the limit, JSON starting with `{`) MODEL_FILE_INVALID;
* the header must be UTF-8 JSON without duplicate keys or NaN/Infinity, every tensor a known dtype with a shape of
  non-negative integers whose byte size matches its offsets, and the offsets must tile the data section exactly
  from 0, in bounds, non-overlapping and without gaps (the rules of the safetensors library the executor loads
  with: a file it would refuse is refused here, before it is stored);
* the file may not exceed the size limit (checked against the declared size, the header's implied size and the
  bytes as they arrive), must end exactly where the header says, and must have the declared size and sha256 when
  the caller gave them (UPLOAD_INCOMPLETE / MODEL_CHECKSUM_MISMATCH).

The sha256 is computed while the bytes stream through. `probe` ranges (tensors detection needs the values of, such
as SD2's v-prediction probe) are copied out of the stream as they pass.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from service_runtime.errors import FieldViolation, Reason, ServiceError

HEADER_PREFIX_BYTES = 8
# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
# The dtypes the built-in engine's loader maps to torch dtypes.
BUILTIN_DTYPES = frozenset({"BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64", "F8_E4M3",
                            "F8_E5M2"})
PICKLE_REFUSAL = "pickle-based formats can execute code when loaded and are refused; convert the file to .safetensors"
FILE_FIELD = "file"
MAX_PROBE_BYTES = 1 << 20  # tensors whose values detection reads are small (a bias vector)


def file_invalid(message: str, problem: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.MODEL_FILE_INVALID, message,
                        {"problem": problem, **metadata}, (FieldViolation(FILE_FIELD, message, problem),))


def unsafe(message: str, problem: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.MODEL_FORMAT_UNSAFE, f"{message}; {PICKLE_REFUSAL}",
                        {"problem": problem}, (FieldViolation(FILE_FIELD, message, problem),))


def too_large(size: int, limit: int, what: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.MODEL_TOO_LARGE,
                        f"{what} {size} bytes: more than the {limit} bytes allowed",
                        {"size_bytes": str(size), "limit_bytes": str(limit)},
                        (FieldViolation(FILE_FIELD, f"larger than {limit} bytes", "MODEL_TOO_LARGE"),))


def incomplete(message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.UPLOAD_INCOMPLETE, message, metadata,
                        (FieldViolation(FILE_FIELD, message, "UPLOAD_INCOMPLETE"),))


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    header_size: int  # N, the JSON's length
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    data_size: int  # where the last tensor ends

    @property
    def file_size(self) -> int:
        return HEADER_PREFIX_BYTES + self.header_size + self.data_size

    @property
    def data_start(self) -> int:
        return HEADER_PREFIX_BYTES + self.header_size

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


# -- sniffing and parsing ----------------------------------------------------------------------------------------


def sniff(head: bytes, max_header_bytes: int, *, complete: bool = False) -> int | None:
    """The header length N from a file's first bytes (at least 9 unless `complete`), or a typed refusal.

    None: not enough bytes yet to decide.
    """
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        raise unsafe("the file is a zip archive (the torch.save / .ckpt / .pt container, or numpy .npz), "
                     "not safetensors", "ZIP_ARCHIVE")
    if head.startswith(b"\x93NUMPY"):
        raise unsafe("the file is a numpy .npy array (which may hold pickled objects), not safetensors", "NUMPY")
    if len(head) < HEADER_PREFIX_BYTES + 1 and not complete:
        return None
    n = int.from_bytes(head[:HEADER_PREFIX_BYTES], "little") if len(head) >= HEADER_PREFIX_BYTES else -1
    shaped = n >= 2 and head[HEADER_PREFIX_BYTES:HEADER_PREFIX_BYTES + 1] == b"{"
    # A pickle of protocol 2 to 5 starts with PROTO (0x80) and its version. A safetensors header length can begin
    # with those two bytes too (N = 640, 896, 1152 or 1408 modulo 65536), so that alone is not a pickle: the JSON
    # must also not follow.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not (shaped and n <= max_header_bytes):
        raise unsafe(f"the file is a pickle stream (protocol {head[1]}), not safetensors", "PICKLE")
    if head.startswith(b"GGUF"):
        raise file_invalid("the file is GGUF, not safetensors: only .safetensors model files are accepted", "GGUF")
    if len(head) < HEADER_PREFIX_BYTES + 1:
        raise file_invalid(f"the file has {len(head)} bytes: too short for a safetensors file", "TRUNCATED_HEADER")
    if not shaped:
        raise file_invalid("not a safetensors file (the first 8 bytes are not the length of a JSON header)",
                           "NOT_SAFETENSORS")
    if n > max_header_bytes:
        raise file_invalid(f"the safetensors header declares {n} bytes: more than the {max_header_bytes} allowed",
                           "HEADER_TOO_LARGE", header_bytes=str(n), limit_bytes=str(max_header_bytes))
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise file_invalid(f"the safetensors header has the key {key!r} twice", "DUPLICATE_KEY", key=key[:200])
        out[key] = value
    return out


def _no_constants(token: str) -> Any:
    raise file_invalid(f"the safetensors header has the non-JSON number {token}", "HEADER_NOT_JSON")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(raw: bytes) -> SafetensorsHeader:
    """Parses and validates the JSON header (the N bytes after the length prefix)."""
    if not raw.startswith(b"{"):
        raise file_invalid("the safetensors header does not start with '{'", "HEADER_NOT_JSON")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError as exc:
        raise file_invalid(f"the safetensors header is not UTF-8: {exc.reason} at byte {exc.start}",
                           "HEADER_NOT_UTF8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise file_invalid(f"the safetensors header is not valid JSON: {exc}", "HEADER_NOT_JSON") from None
    if not isinstance(doc, dict):
        raise file_invalid("the safetensors header is not a JSON object", "HEADER_NOT_JSON")
    metadata_raw = doc.pop("__metadata__", None)
    metadata: dict[str, str] = {}
    if metadata_raw is not None:
        if not isinstance(metadata_raw, dict) or not all(isinstance(v, str) for v in metadata_raw.values()):
            raise file_invalid("__metadata__ must be an object of string values", "METADATA_INVALID")
        metadata = dict(metadata_raw)
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _tensor(name, entry)
    expected = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin < expected:
            raise file_invalid(f"tensor {name!r} (bytes {info.begin}..{info.end}) overlaps the tensor before it, "
                               f"which ends at {expected}", "OFFSETS_OVERLAP", tensor=name[:200])
        if info.begin > expected:
            raise file_invalid(f"the data section has unused bytes {expected}..{info.begin} before tensor {name!r} "
                               "(the safetensors loader refuses gaps)", "OFFSETS_GAP", tensor=name[:200])
        expected = info.end
    return SafetensorsHeader(header_size=len(raw), tensors=tensors, metadata=metadata, data_size=expected)


def _tensor(name: str, entry: Any) -> TensorInfo:
    short = name[:200]
    if not isinstance(entry, dict):
        raise file_invalid(f"header entry {name!r} is not an object", "TENSOR_MALFORMED", tensor=short)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise file_invalid(f"header entry {name!r} needs dtype, shape and data_offsets", "TENSOR_MALFORMED",
                           tensor=short)
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        raise file_invalid(f"tensor {name!r} has the unknown dtype {dtype[:40]!r}", "UNKNOWN_DTYPE", tensor=short,
                           dtype=dtype[:40])
    if not all(_is_int(d) and d >= 0 for d in shape):
        raise file_invalid(f"tensor {name!r} has a malformed shape {shape!r:.200}", "SHAPE_INVALID", tensor=short)
    if len(offsets) != 2 or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]:
        raise file_invalid(f"tensor {name!r} has malformed data_offsets {offsets!r:.200}", "OFFSETS_INVALID",
                           tensor=short)
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    total_bits = info.numel * bits
    if total_bits % 8 or info.end - info.begin != total_bits // 8:
        raise file_invalid(f"tensor {name!r} is {dtype}{list(shape)} ({total_bits / 8:g} bytes) but its offsets "
                           f"span {info.end - info.begin} bytes", "SIZE_MISMATCH", tensor=short)
    return info


# -- the stream ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_header_bytes: int


@dataclass(frozen=True)
class ValidatedFile:
    sha256: str
    size_bytes: int
    header: SafetensorsHeader
    probes: Mapping[str, bytes] = field(default_factory=dict)


class StreamValidator:
    """Feed it the file's bytes in order; it raises a typed ServiceError the moment the file is known bad.

    `on_header` is called once, as soon as the header is parsed: it may refuse the file (raise), and it names the
    tensors whose bytes to keep (small ones, whose values detection reads).
    """

    def __init__(self, limits: Limits, *, declared_size: int = 0, expected_sha256: str = "",
                 on_header: Callable[[SafetensorsHeader], Iterable[str]] | None = None) -> None:
        if declared_size > limits.max_bytes:
            raise too_large(declared_size, limits.max_bytes, "the declared size is")
        self._limits = limits
        self._declared = declared_size
        self._expected_sha256 = expected_sha256
        self._on_header = on_header
        self._sha = hashlib.sha256()
        self._head = bytearray()
        self._header_size: int | None = None
        self.header: SafetensorsHeader | None = None
        self._probes: dict[str, tuple[int, int, bytearray]] = {}
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        start = self.received
        self.received += len(chunk)
        self._sha.update(chunk)
        if self.received > self._limits.max_bytes:
            raise too_large(self.received, self._limits.max_bytes, "the file has at least")
        if self._declared and self.received > self._declared:
            raise incomplete(f"more bytes arrived than the declared size_bytes {self._declared}",
                             declared_bytes=str(self._declared), received_bytes=str(self.received))
        if self.header is None:
            self._take_header(chunk, start)
        if self.header is not None:
            if self.received > self.header.file_size:
                raise file_invalid(f"the file goes on after the last tensor, which ends at byte "
                                   f"{self.header.file_size}", "TRAILING_BYTES",
                                   expected_bytes=str(self.header.file_size))
            if self._probes:
                self._capture(start, chunk)

    def _take_header(self, chunk: bytes, start: int) -> None:
        """Collects the bytes of the length prefix and the JSON header (`_head` holds the file's first bytes)."""
        while self.header is None:
            need = HEADER_PREFIX_BYTES + 1 if self._header_size is None else HEADER_PREFIX_BYTES + self._header_size
            have = len(self._head)
            if have < need:
                pos = have - start  # where the file's byte `have` is in this chunk
                self._head += chunk[pos: pos + need - have]
            if len(self._head) < need:
                return
            if self._header_size is None:
                self._header_size = sniff(bytes(self._head), self._limits.max_header_bytes)
                continue
            self._set_header(parse_header(bytes(self._head[HEADER_PREFIX_BYTES:])))
            self._head = bytearray()

    def _set_header(self, header: SafetensorsHeader) -> None:
        self.header = header
        if header.file_size > self._limits.max_bytes:
            raise too_large(header.file_size, self._limits.max_bytes, "the header describes a file of")
        if self._declared and header.file_size != self._declared:
            if header.file_size > self._declared:
                raise file_invalid(f"the header's tensors end at byte {header.file_size}, outside the file of "
                                   f"{self._declared} bytes (declared size_bytes)", "OFFSETS_OUT_OF_BOUNDS",
                                   expected_bytes=str(header.file_size), declared_bytes=str(self._declared))
            raise file_invalid(f"the header's tensors end at byte {header.file_size} but the file has "
                               f"{self._declared} bytes (declared size_bytes)", "TRAILING_BYTES",
                               expected_bytes=str(header.file_size), declared_bytes=str(self._declared))
        if self._on_header is not None:
            for name in self._on_header(header):
                info = header.tensors.get(name)
                if info is not None and info.end - info.begin <= MAX_PROBE_BYTES:
                    self._probes[name] = (header.data_start + info.begin, header.data_start + info.end, bytearray())

    def _capture(self, start: int, chunk: bytes) -> None:
        end = start + len(chunk)
        for begin, stop, buffer in self._probes.values():
            lo, hi = max(begin, start), min(stop, end)
            if lo < hi:
                buffer += chunk[lo - start: hi - start]

    def finish(self) -> ValidatedFile:
        """Checks the end of the file: sizes, the header's extent, the checksum."""
        if self._declared and self.received < self._declared:
            raise incomplete(f"the upload ended after {self.received} of the {self._declared} declared bytes",
                             declared_bytes=str(self._declared), received_bytes=str(self.received))
        if self.header is None:
            if self._header_size is None:
                sniff(bytes(self._head), self._limits.max_header_bytes, complete=True)
            raise file_invalid(f"the file ends after {self.received} bytes, inside its safetensors header",
                               "TRUNCATED_HEADER")
        if self.received < self.header.file_size:
            raise file_invalid(f"the header's tensors end at byte {self.header.file_size} but the file ends at byte "
                               f"{self.received}: truncated, or offsets pointing outside the file",
                               "OFFSETS_OUT_OF_BOUNDS", expected_bytes=str(self.header.file_size),
                               received_bytes=str(self.received))
        digest = self._sha.hexdigest()
        if self._expected_sha256 and digest != self._expected_sha256:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.MODEL_CHECKSUM_MISMATCH,
                               f"the file's sha256 is {digest}, not the expected {self._expected_sha256}",
                               {"sha256": digest, "expected_sha256": self._expected_sha256},
                               (FieldViolation("sha256", "does not match the file", "MODEL_CHECKSUM_MISMATCH"),))
        probes = {name: bytes(buf) for name, (_b, _e, buf) in self._probes.items()}
        return ValidatedFile(digest, self.received, self.header, probes)
