"""The Model as ModelService's domain sees it: kinds and their ComfyUI folders, architectures, records, names and
the object-key layout the executors read. Plain Python, no generated code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from service_runtime.errors import FieldViolation, Reason, ServiceError, invalid_argument
from service_runtime.grpc.identity import DEFAULT_TENANT

SHARED_TENANT = ""  # models every tenant sees (registered by an operator)
SAFE_SUFFIXES = (".safetensors", ".sft")  # what the executors load (gpu_executor.engine.runtime.MODEL_EXTENSIONS)
# Pickle-based formats: they can execute code when loaded, so they are refused by name before a byte is read (and
# by content, whatever the name, see safetensors_header.sniff).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle", ".pt2", ".joblib", ".npy", ".npz", ".mar")
MAX_NAME_LENGTH = 255
TENANTS_DIR = "tenants"  # <folder>/tenants/<tenant>/<name>: where a non-default tenant's models live
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelKind(StrEnum):
    CHECKPOINT = "CHECKPOINT"
    LORA = "LORA"
    VAE = "VAE"
    CONTROLNET = "CONTROLNET"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    EMBEDDING = "EMBEDDING"
    TEXT_ENCODER = "TEXT_ENCODER"
    DIFFUSION_MODEL = "DIFFUSION_MODEL"
    CLIP_VISION = "CLIP_VISION"

    @property
    def folder(self) -> str:
        """ComfyUI's model folder (the current names; ComfyUI and the executor still read `clip` and `unet`)."""
        return KIND_FOLDERS[self]


KIND_FOLDERS: dict[ModelKind, str] = {
    ModelKind.CHECKPOINT: "checkpoints",
    ModelKind.LORA: "loras",
    ModelKind.VAE: "vae",
    ModelKind.CONTROLNET: "controlnet",
    ModelKind.UPSCALE_MODEL: "upscale_models",
    ModelKind.EMBEDDING: "embeddings",
    ModelKind.TEXT_ENCODER: "text_encoders",
    ModelKind.DIFFUSION_MODEL: "diffusion_models",
    ModelKind.CLIP_VISION: "clip_vision",
}


class Architecture(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    SD1 = "SD1"
    SD2 = "SD2"
    SD2_V = "SD2_V"
    SDXL = "SDXL"
    SDXL_REFINER = "SDXL_REFINER"
    SD3 = "SD3"
    FLUX = "FLUX"
    OTHER = "OTHER"


BUILTIN_ARCHITECTURES = frozenset({Architecture.SD1, Architecture.SD2, Architecture.SD2_V, Architecture.SDXL,
                                   Architecture.SDXL_REFINER})


class ModelState(StrEnum):
    PENDING = "PENDING"  # bytes streaming in; the row holds the name
    READY = "READY"


class UploadState(StrEnum):
    OPEN = "OPEN"
    COMPLETED = "COMPLETED"


@dataclass(frozen=True)
class Description:
    """What validation and detection found in a file (safetensors_header + architecture)."""

    architecture: Architecture = Architecture.UNSPECIFIED
    supported: bool = False
    parameter_count: int = 0
    dtypes: tuple[str, ...] = ()
    lora_rank: int = 0
    file_metadata: dict[str, str] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)  # JSON scalars, lists and objects


@dataclass
class ModelRecord:
    id: str
    tenant: str
    name: str
    kind: ModelKind
    state: ModelState
    bucket: str
    object_key: str
    create_time: datetime
    update_time: datetime
    size_bytes: int = 0
    sha256: str = ""
    description: Description = field(default_factory=Description)
    request_id: str | None = None

    @property
    def executor_name(self) -> str:
        """The name an executor's loader nodes see this model under (its object key without the folder)."""
        return self.object_key.split("/", 1)[1]


@dataclass(frozen=True)
class Location:
    """An executor holding a model at a cache tier, as of its last heartbeat."""

    executor_id: str
    tier: str  # "GPU", "RAM", "DISK", "OBJECT_STORE"
    report_time: datetime


@dataclass
class UploadSession:
    """A presigned upload: the client PUTs the bytes to `staging_key` (one PUT, or parts of a multipart upload)."""

    id: str
    tenant: str
    name: str
    kind: ModelKind
    state: UploadState
    staging_key: str
    create_time: datetime
    update_time: datetime
    expire_time: datetime
    size_bytes: int = 0
    sha256: str = ""
    request_id: str | None = None
    multipart_id: str = ""
    part_size_bytes: int = 0
    model_id: str | None = None

    def part_ranges(self) -> list[tuple[int, int, int]]:
        """(part number, offset, length) of every part of a multipart upload."""
        if not self.multipart_id or self.part_size_bytes <= 0:
            return []
        parts, offset, number = [], 0, 1
        while offset < self.size_bytes:
            length = min(self.part_size_bytes, self.size_bytes - offset)
            parts.append((number, offset, length))
            offset += length
            number += 1
        return parts


@dataclass(frozen=True)
class ModelFilter:
    kind: ModelKind | None = None
    architecture: Architecture | None = None
    name_contains: str = ""


@dataclass(frozen=True)
class UploadSpec:
    """What a caller says it uploads (UploadModelMetadata / ImportModelRequest), already checked by `check_spec`."""

    name: str
    kind: ModelKind
    size_bytes: int = 0
    sha256: str = ""
    request_id: str | None = None


# -- names and keys ----------------------------------------------------------------------------------------------


def _bad(field_path: str, message: str, sub_reason: str, reason: Reason = Reason.INVALID_ARGUMENT) -> ServiceError:
    return invalid_argument(message, FieldViolation(field_path, message, sub_reason), reason=reason)


def check_name(name: str, field_path: str = "name") -> str:
    """A model name as nodes reference it: a relative path under the folder (subfolders with "/") ending in
    .safetensors or .sft. Pickle suffixes are MODEL_FORMAT_UNSAFE, other suffixes MODEL_FILE_INVALID."""
    if not name:
        raise _bad(field_path, "the model name is required", "REQUIRED")
    if len(name) > MAX_NAME_LENGTH:
        raise _bad(field_path, f"the model name is longer than {MAX_NAME_LENGTH} characters", "NAME_TOO_LONG")
    if any(ord(c) < 32 or c in '\\:*?"<>|\x7f' for c in name):
        raise _bad(field_path, "the model name has a control character or one of \\ : * ? \" < > |",
                   "NAME_INVALID_CHARACTER")
    parts = name.split("/")
    if any(p in ("", ".", "..") or p != p.strip() for p in parts):
        raise _bad(field_path, "the model name must be a relative path without empty, '.', '..' or padded parts",
                   "NAME_INVALID_PATH")
    if parts[0] == TENANTS_DIR:
        raise _bad(field_path, f"model names may not start with '{TENANTS_DIR}/' (reserved)", "NAME_RESERVED")
    lowered = name.lower()
    if lowered.endswith(PICKLE_SUFFIXES):
        raise _bad(field_path, f"{name}: pickle-based formats (.ckpt, .pt, .pth, .bin, ...) can execute code when "
                               "loaded and are refused; convert the file to .safetensors",
                   "PICKLE_FORMAT", Reason.MODEL_FORMAT_UNSAFE)
    if not lowered.endswith(SAFE_SUFFIXES):
        raise _bad(field_path, f"{name}: only .safetensors (or .sft) model files are accepted", "NOT_SAFETENSORS",
                   Reason.MODEL_FILE_INVALID)
    return name


def check_sha256(value: str, field_path: str = "sha256") -> str:
    digest = value.strip().lower()
    if digest and not _SHA256.fullmatch(digest):
        raise _bad(field_path, "sha256 must be 64 hexadecimal characters", "SHA256_MALFORMED")
    return digest


def object_key(tenant: str, kind: ModelKind, name: str) -> str:
    """Where a model lives in the models bucket: `<folder>/<name>`, the layout the executors resolve names from
    (gpu_executor.model_tiers.bucket). The default tenant's (and shared) models are exactly there; another tenant's
    go under `<folder>/tenants/<tenant>/<name>`, so two tenants' equal names never share an object."""
    if tenant in (DEFAULT_TENANT, SHARED_TENANT):
        return f"{kind.folder}/{name}"
    return f"{kind.folder}/{TENANTS_DIR}/{tenant}/{name}"


def sidecar_key(key: str) -> str:
    """`<key>.sha256`: the digest the executors verify a download against (written after validation)."""
    return key + ".sha256"


def staging_key(tenant: str, upload_id: str) -> str:
    """Where a presigned upload's bytes land: outside every model folder, so no executor ever lists them."""
    return f"_uploads/{tenant}/{upload_id}"


def import_key_allowed(tenant: str, key: str) -> bool:
    """Object keys a tenant may import from: unregistered files in its own part of the layout (e.g. one an operator
    copied to `checkpoints/x.safetensors`) or under `imports/<tenant>/`. Never another tenant's models, nor the
    presigned-upload staging area."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return False
    if parts[0] == "imports":
        return len(parts) > 2 and parts[1] == tenant
    if parts[0] not in KIND_FOLDERS.values() or len(parts) < 2:
        return False
    in_tenants_dir = parts[1] == TENANTS_DIR
    if tenant == DEFAULT_TENANT:
        return not in_tenants_dir
    return in_tenants_dir and len(parts) > 3 and parts[2] == tenant
