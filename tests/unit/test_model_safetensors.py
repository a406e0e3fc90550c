"""Safetensors validation on a byte stream (services/model/safetensors_header.py) and model names/keys: every
refusal is typed, pickles are refused by name and by content without being unpickled, and the checks fire as soon
as the bytes that decide them have arrived."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from typing import Any

import grpc
import pytest
from safetensors import safe_open

from service_runtime.errors import Reason, ServiceError
from services.model.domain import ModelKind, check_name, check_sha256, import_key_allowed, object_key
from services.model.safetensors_header import Limits, StreamValidator, parse_header
from services.model.testing import header_bytes, safetensors_bytes

pytestmark = pytest.mark.unit
LIMITS = Limits(max_bytes=1 << 20, max_header_bytes=4096)
LAYOUT = {"w.weight": (8, 4), "w.bias": (8,), "emb": (3, 2)}


def _raw(doc: object) -> bytes:
    text = json.dumps(doc).encode()
    return len(text).to_bytes(8, "little") + text


def _validate(data: bytes, *, chunk: int = 7, limits: Limits = LIMITS, **kwargs: Any) -> Any:
    validator = StreamValidator(limits, **kwargs)
    for i in range(0, len(data), chunk):
        validator.feed(data[i:i + chunk])
    return validator.finish()


def _refused(data: bytes, **kwargs: Any) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        _validate(data, **kwargs)
    return info.value


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 64, 1 << 20])
def test_a_valid_file_passes_in_any_chunking_with_its_sha256(chunk: int) -> None:
    data = safetensors_bytes(LAYOUT, metadata={"ss_network_dim": "4"}, fill="random")
    result = _validate(data, chunk=chunk, declared_size=len(data), expected_sha256=hashlib.sha256(data).hexdigest())
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size_bytes == len(data)
    header = result.header
    assert header.metadata == {"ss_network_dim": "4"}
    assert header.shapes() == LAYOUT
    assert header.file_size == len(data)


def test_the_library_reads_what_the_test_writer_writes(tmp_path: object) -> None:
    path = f"{tmp_path}/x.safetensors"
    with open(path, "wb") as f:
        f.write(safetensors_bytes(LAYOUT, metadata={"a": "b"}))
    with safe_open(path, "np") as st:
        assert set(st.keys()) == set(LAYOUT)


def test_probe_bytes_are_copied_out_of_the_stream() -> None:
    bias = bytes(range(16))
    data = safetensors_bytes(LAYOUT, data={"w.bias": bias}, fill="random")
    for chunk in (1, 5, 100):
        result = _validate(data, chunk=chunk, on_header=lambda header: ["w.bias", "missing"])
        assert result.probes == {"w.bias": bias}


def test_a_header_length_that_looks_like_a_pickle_opcode_is_still_safetensors() -> None:
    # N = 640 is b"\x80\x02\x00..." (PROTO 2): a pickle's first two bytes, but the JSON follows.
    head, _ = header_bytes({"t": (1,)}, metadata={"pad": ""})
    doc = json.loads(head[8:])
    doc["__metadata__"]["pad"] = "x" * (640 - len(head[8:]))
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (640 - len(raw))
    data = (640).to_bytes(8, "little") + raw + b"\x00\x00"
    assert data[:2] == b"\x80\x02"
    assert _validate(data).size_bytes == len(data)


# -- refused by content -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_are_refused_unsafe_from_their_first_bytes(protocol: int) -> None:
    data = pickle.dumps({"state_dict": {"w": [1.0] * 100}}, protocol=protocol)
    validator = StreamValidator(LIMITS)
    with pytest.raises(ServiceError) as info:
        validator.feed(data[:9])  # decided on the first bytes: nothing more is read, nothing is unpickled
    assert info.value.reason == Reason.MODEL_FORMAT_UNSAFE
    assert info.value.metadata["problem"] == "PICKLE"


def test_a_tiny_pickle_is_refused_unsafe_at_the_end() -> None:
    assert _refused(b"\x80\x04N.").reason == Reason.MODEL_FORMAT_UNSAFE


def test_torch_zip_checkpoints_are_refused_unsafe() -> None:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    error = _refused(buffer.getvalue())
    assert (error.reason, error.metadata["problem"]) == (Reason.MODEL_FORMAT_UNSAFE, "ZIP_ARCHIVE")
    legacy = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, legacy, _use_new_zipfile_serialization=False)
    assert _refused(legacy.getvalue()).reason == Reason.MODEL_FORMAT_UNSAFE


def test_zip_and_npy_are_refused_unsafe() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))
    assert _refused(buffer.getvalue()).reason == Reason.MODEL_FORMAT_UNSAFE
    assert _refused(b"\x93NUMPY\x01\x00" + b"x" * 100).reason == Reason.MODEL_FORMAT_UNSAFE


@pytest.mark.parametrize(("data", "problem"), [
    (b"GGUF\x03\x00\x00\x00" + bytes(64), "GGUF"),
    (b"hello world, not a model", "NOT_SAFETENSORS"),
    (b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]", "NOT_SAFETENSORS"),
    (b"\x02\x00\x00", "TRUNCATED_HEADER"),
    (b"", "TRUNCATED_HEADER"),
])
def test_other_formats_are_refused_invalid(data: bytes, problem: str) -> None:
    error = _refused(data)
    assert (error.code, error.reason, error.metadata["problem"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, Reason.MODEL_FILE_INVALID, problem)
    assert error.field_violations[0].field == "file"


def test_an_oversized_header_is_refused_from_the_first_nine_bytes() -> None:
    data = (LIMITS.max_header_bytes + 8).to_bytes(8, "little") + b"{" + b" " * 100
    validator = StreamValidator(LIMITS)
    with pytest.raises(ServiceError) as info:
        validator.feed(data[:9])
    assert (info.value.reason, info.value.metadata["problem"]) == (Reason.MODEL_FILE_INVALID, "HEADER_TOO_LARGE")


@pytest.mark.parametrize(("doc", "problem"), [
    ({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 2]}}, "UNKNOWN_DTYPE"),
    ({"t": {"dtype": "F16", "shape": [3], "data_offsets": [0, 4]}}, "SIZE_MISMATCH"),
    ({"t": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}, "SHAPE_INVALID"),
    ({"t": {"dtype": "F16", "shape": [True], "data_offsets": [0, 2]}}, "SHAPE_INVALID"),
    ({"t": {"dtype": "F16", "shape": [1], "data_offsets": [2, 0]}}, "OFFSETS_INVALID"),
    ({"t": {"dtype": "F16", "shape": [1]}}, "TENSOR_MALFORMED"),
    ({"t": [1, 2]}, "TENSOR_MALFORMED"),
    ({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
      "b": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]}}, "OFFSETS_OVERLAP"),
    ({"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
      "b": {"dtype": "F16", "shape": [1], "data_offsets": [4, 6]}}, "OFFSETS_GAP"),
    ({"__metadata__": {"epochs": 3}}, "METADATA_INVALID"),
    ({"__metadata__": [1]}, "METADATA_INVALID"),
])
def test_inconsistent_headers_are_refused(doc: object, problem: str) -> None:
    error = _refused(_raw(doc) + bytes(64))
    assert (error.reason, error.metadata["problem"]) == (Reason.MODEL_FILE_INVALID, problem)


@pytest.mark.parametrize(("raw", "problem"), [
    (b'{"a": 1', "HEADER_NOT_JSON"),
    (b'{"a": NaN}', "HEADER_NOT_JSON"),
    (b'{"t": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}, "t": {}}', "DUPLICATE_KEY"),
    (b'{"\xff": 1}', "HEADER_NOT_UTF8"),
    (b' {"a": 1}', "NOT_SAFETENSORS"),
])
def test_malformed_json_is_refused(raw: bytes, problem: str) -> None:
    error = _refused(len(raw).to_bytes(8, "little") + raw)
    assert error.metadata["problem"] == problem


def test_parse_header_reports_the_data_extent() -> None:
    head, _ = header_bytes(LAYOUT)
    header = parse_header(head[8:])
    assert header.data_size == (32 + 8 + 6) * 2
    assert header.file_size == len(head) + header.data_size


# -- refused by extent and size -----------------------------------------------------------------------------------


def test_a_header_pointing_outside_the_file_is_refused() -> None:
    data = safetensors_bytes(LAYOUT)
    cut = data[:-10]
    error = _refused(cut)
    assert (error.reason, error.metadata["problem"]) == (Reason.MODEL_FILE_INVALID, "OFFSETS_OUT_OF_BOUNDS")
    # With the size declared, the refusal comes as soon as the header is in.
    validator = StreamValidator(LIMITS, declared_size=len(cut))
    with pytest.raises(ServiceError) as info:
        validator.feed(cut[:len(header_bytes(LAYOUT)[0])])
    assert info.value.metadata["problem"] == "OFFSETS_OUT_OF_BOUNDS"


def test_a_truncated_upload_is_incomplete_when_its_size_was_declared() -> None:
    data = safetensors_bytes(LAYOUT)
    validator = StreamValidator(LIMITS, declared_size=len(data))
    validator.feed(data[:-5])
    with pytest.raises(ServiceError) as info:
        validator.finish()
    assert info.value.reason == Reason.UPLOAD_INCOMPLETE


def test_bytes_beyond_the_declared_size_or_the_last_tensor_are_refused() -> None:
    data = safetensors_bytes(LAYOUT)
    assert _refused(data + b"x").metadata["problem"] == "TRAILING_BYTES"
    assert _refused(data + b"x", declared_size=len(data)).reason == Reason.UPLOAD_INCOMPLETE
    assert _refused(data, declared_size=len(data) + 1).metadata["problem"] == "TRAILING_BYTES"


def test_the_size_limit_is_checked_on_the_declared_size_the_header_and_the_stream() -> None:
    small = Limits(max_bytes=200, max_header_bytes=4096)
    with pytest.raises(ServiceError) as info:
        StreamValidator(small, declared_size=201)
    assert info.value.reason == Reason.MODEL_TOO_LARGE
    big = safetensors_bytes({"t": (1000,)})
    validator = StreamValidator(small)
    with pytest.raises(ServiceError) as info:
        validator.feed(big[:len(header_bytes({"t": (1000,)})[0])])  # the header alone says it is too large
    assert info.value.reason == Reason.MODEL_TOO_LARGE
    stream = StreamValidator(Limits(max_bytes=10, max_header_bytes=4096))
    with pytest.raises(ServiceError) as info:
        stream.feed(b"\x00" * 11)
    assert info.value.reason == Reason.MODEL_TOO_LARGE


def test_a_wrong_sha256_is_a_checksum_mismatch() -> None:
    error = _refused(safetensors_bytes(LAYOUT), expected_sha256="0" * 64)
    assert (error.reason, error.field_violations[0].field) == (Reason.MODEL_CHECKSUM_MISMATCH, "sha256")


# -- names and keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "reason"), [
    ("sd15.ckpt", Reason.MODEL_FORMAT_UNSAFE),
    ("lora.PT", Reason.MODEL_FORMAT_UNSAFE),
    ("pytorch_model.bin", Reason.MODEL_FORMAT_UNSAFE),
    ("model.gguf", Reason.MODEL_FILE_INVALID),
    ("model", Reason.MODEL_FILE_INVALID),
    ("../escape.safetensors", Reason.INVALID_ARGUMENT),
    ("/abs.safetensors", Reason.INVALID_ARGUMENT),
    ("a//b.safetensors", Reason.INVALID_ARGUMENT),
    ("a\\b.safetensors", Reason.INVALID_ARGUMENT),
    ("tenants/x/y.safetensors", Reason.INVALID_ARGUMENT),
    ("", Reason.INVALID_ARGUMENT),
    ("x" * 300 + ".safetensors", Reason.INVALID_ARGUMENT),
])
def test_bad_names_are_refused_before_any_byte(name: str, reason: Reason) -> None:
    with pytest.raises(ServiceError) as info:
        check_name(name)
    assert info.value.reason == reason
    assert info.value.field_violations[0].field == "name"


def test_good_names_and_digests() -> None:
    assert check_name("styles/ink.safetensors") == "styles/ink.safetensors"
    assert check_name("flux-dev.sft") == "flux-dev.sft"
    assert check_sha256("AB" * 32) == "ab" * 32
    with pytest.raises(ServiceError):
        check_sha256("xyz")


def test_object_keys_follow_the_executor_layout() -> None:
    assert object_key("default", ModelKind.CHECKPOINT, "sd15.safetensors") == "checkpoints/sd15.safetensors"
    assert object_key("default", ModelKind.LORA, "s/ink.safetensors") == "loras/s/ink.safetensors"
    assert object_key("acme", ModelKind.TEXT_ENCODER, "t5.safetensors") == "text_encoders/tenants/acme/t5.safetensors"
    assert object_key("default", ModelKind.DIFFUSION_MODEL, "f.sft") == "diffusion_models/f.sft"


@pytest.mark.parametrize(("tenant", "key", "allowed"), [
    ("default", "checkpoints/x.safetensors", True),
    ("default", "imports/default/x.safetensors", True),
    ("default", "imports/acme/x.safetensors", False),
    ("default", "checkpoints/tenants/acme/x.safetensors", False),
    ("acme", "checkpoints/x.safetensors", False),
    ("acme", "checkpoints/tenants/acme/x.safetensors", True),
    ("default", "_uploads/default/abc", False),
    ("default", "checkpoints/../x.safetensors", False),
    ("default", "elsewhere/x.safetensors", False),
])
def test_importable_keys_stay_inside_the_callers_namespace(tenant: str, key: str, allowed: bool) -> None:
    assert import_key_allowed(tenant, key) is allowed
