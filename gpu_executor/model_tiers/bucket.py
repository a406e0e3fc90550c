"""The models bucket (`<s3_bucket_prefix>-models`) as the executor reads it: which model files it holds, and the
sha256 each must have.

Layout: a model that nodes reference as NAME in ComfyUI folder FOLDER is the object `FOLDER/NAME`, e.g.
`checkpoints/sd15.safetensors` or `loras/styles/ink.safetensors`; only ComfyUI's model folders and safetensors
suffixes count. Its sha256 (hex) is the object's user metadata `sha256` (`x-amz-meta-sha256`), else the first word
of a sidecar object `FOLDER/NAME.sha256` (`sha256sum` output). A model without either is refused rather than used
unverified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc
import urllib3
from minio import Minio
from minio.error import S3Error

from gpu_executor.engine.runtime import MODEL_EXTENSIONS, MODEL_FOLDERS
from service_runtime.errors import Reason, ServiceError, not_found, unavailable

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
SIDECAR_SUFFIX = ".sha256"


@dataclass(frozen=True)
class RemoteModel:
    key: str
    folder: str
    name: str
    size: int
    etag: str


def model_key(folder: str, name: str) -> str | None:
    """The object key of a model, or None for a name that cannot be one (absolute, climbing out, empty parts)."""
    parts = name.replace("\\", "/").split("/")
    if folder not in MODEL_FOLDERS or not name or any(p in ("", ".", "..") for p in parts):
        return None
    return f"{folder}/{'/'.join(parts)}"


def split_key(key: str) -> tuple[str, str] | None:
    """(folder, name) of an object key that names a model file, else None."""
    folder, _, name = key.partition("/")
    if folder not in MODEL_FOLDERS or not name.lower().endswith(MODEL_EXTENSIONS) or model_key(folder, name) != key:
        return None
    return folder, name


class ModelBucket:
    """Listing and checksums of the models bucket (synchronous: the worker calls it from its resolver thread)."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    @classmethod
    def connect(cls, endpoint: str, access_key: str, secret_key: str, bucket: str, *, secure: bool = False,
                region: str = "us-east-1") -> ModelBucket:
        # Short timeouts and one retry: a listing that cannot be had now is retried on the next lookup.
        http = urllib3.PoolManager(maxsize=4, timeout=urllib3.Timeout(connect=2, read=20),
                                   retries=urllib3.Retry(total=1, backoff_factor=0.1))
        return cls(Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                         http_client=http), bucket)

    def list(self) -> dict[str, RemoteModel]:
        """Model files by object key; an absent bucket holds none. Raises UNAVAILABLE when the store is not
        reachable."""
        models: dict[str, RemoteModel] = {}
        try:
            for item in self.client.list_objects(self.bucket, recursive=True):
                key = item.object_name or ""
                where = split_key(key)
                if where is not None and not item.is_dir:
                    models[key] = RemoteModel(key, where[0], where[1], int(item.size or 0),
                                              (item.etag or "").strip('"'))
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return {}
            raise _error(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise unavailable(f"object store unreachable: {exc}") from exc
        return models

    def sha256(self, key: str) -> str:
        """The expected sha256 of a model object (metadata, else sidecar); MODEL_CHECKSUM_MISMATCH when none is
        recorded, RESOURCE_NOT_FOUND when the object is gone."""
        try:
            stat = self.client.stat_object(self.bucket, key)
            metadata = {k.lower(): v for k, v in (stat.metadata or {}).items()}
            digest = str(metadata.get("x-amz-meta-sha256", "")).strip()
            if not _SHA256.fullmatch(digest):
                digest = self._sidecar(key)
        except S3Error as exc:
            raise _error(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise unavailable(f"object store unreachable: {exc}") from exc
        if not _SHA256.fullmatch(digest):
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.MODEL_CHECKSUM_MISMATCH,
                               f"model object {self.bucket}/{key} has no sha256 (metadata x-amz-meta-sha256 or a "
                               f"{key}{SIDECAR_SUFFIX} object); it is not used unverified",
                               {"bucket": self.bucket, "key": key})
        return digest.lower()

    def _sidecar(self, key: str) -> str:
        try:
            response = self.client.get_object(self.bucket, key + SIDECAR_SUFFIX)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return ""
            raise
        try:
            words = response.read(4096).decode("ascii", "replace").split()
        finally:
            response.close()
            response.release_conn()
        return words[0] if words else ""


def _error(exc: S3Error) -> ServiceError:
    if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
        return not_found(f"object not found: {exc.bucket_name}/{exc.object_name}", bucket=str(exc.bucket_name),
                         key=str(exc.object_name))
    return ServiceError(grpc.StatusCode.UNAVAILABLE, Reason.BACKEND_UNAVAILABLE, f"object store error: {exc.code}",
                        {"s3_code": str(exc.code)})
