"""Input and output files of executions, in the object store.

Inputs (UploadInput) go to the inputs bucket under a tenant-scoped, content-addressed key
`{tenant}/{sha256}/{filename}`: the same bytes under the same name are stored once, and SubmitExecution checks with
`input_key_belongs_to` that an `InputFile.object_key` is the caller's before an executor reads it
(gpu_executor/io/inputs.py fetches it from the same bucket by that key). Outputs are what executors uploaded to the
outputs bucket; an execution's record lists them (OutputFile fields with their `object_key`), and they are served
as presigned URLs (GetExecution) or streamed in chunks (DownloadOutput).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, cast

from service_runtime.errors import FieldViolation, Reason, ServiceError, invalid_argument, not_found, unavailable
from service_runtime.object_store import CHUNK_SIZE, ObjectStore
from service_runtime.settings import Settings
from services.execution_store.domain import ExecutionRecord

log = logging.getLogger(__name__)
MAX_NAME_CHARS = 1024
MAX_COMPONENT_BYTES = 255
MAX_CONTENT_TYPE_CHARS = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class StoredInput:
    object_key: str
    sha256: str
    size: int
    content_type: str


@dataclass(frozen=True)
class PresignedUrl:
    url: str
    expire_time: datetime


@dataclass(frozen=True)
class OutputRef:
    """One output of an execution record (its dict holds OutputFile fields, snake_case or camelCase)."""

    name: str  # "sub/dir/name.png", or "name.png" without a subfolder
    object_key: str
    content_type: str
    type: str


@dataclass(frozen=True)
class OutputDownload:
    """An output being read: its media type and its bytes in chunks of at most 1 MiB (`chunks()`, once); `aclose`
    releases the connection to the object store, whether or not every chunk was read."""

    name: str
    content_type: str
    first_chunk: bytes
    _rest: AsyncGenerator[bytes, None]

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.first_chunk
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        await self._rest.aclose()


def _violation(field: str, description: str, sub_reason: str, **metadata: str) -> ServiceError:
    return invalid_argument(description, FieldViolation(field, description, sub_reason), reason=Reason.INPUT_INVALID,
                            **metadata)


def clean_filename(filename: str, field: str = "filename") -> str:
    """A relative, normalised file name (subfolders with "/"); refuses traversal, absolute names, control
    characters and backslashes, like the executor refuses them for input names."""
    shown = repr(filename[:80])
    if not filename or not filename.strip():
        raise _violation(field, "the file name is empty", "NAME_EMPTY")
    if len(filename) > MAX_NAME_CHARS:
        raise _violation(field, f"the file name is longer than {MAX_NAME_CHARS} characters", "NAME_TOO_LONG")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in filename) or "\\" in filename:
        raise _violation(field, f"file name {shown} contains a control character or a backslash", "NAME_CHARACTERS")
    if filename.startswith("/"):
        raise _violation(field, f"file name {shown} is absolute", "NAME_ABSOLUTE")
    parts = [part for part in PurePosixPath(filename).parts if part != "."]
    if ".." in parts:
        raise _violation(field, f"file name {shown} escapes its folder (..)", "NAME_ESCAPES")
    if not parts or any(not part.strip() for part in parts):
        raise _violation(field, f"file name {shown} names no file", "NAME_EMPTY")
    if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in parts):
        raise _violation(field, f"file name {shown} has a part longer than {MAX_COMPONENT_BYTES} bytes",
                         "NAME_TOO_LONG")
    return "/".join(parts)


def _check_content_type(content_type: str, filename: str) -> str:
    if not content_type:
        return mimetypes.guess_type(filename)[0] or DEFAULT_CONTENT_TYPE
    kind, slash, subtype = content_type.partition("/")
    if (len(content_type) > MAX_CONTENT_TYPE_CHARS or not slash or not kind.strip() or not subtype.strip()
            or any(ord(c) < 0x20 or ord(c) >= 0x7F for c in content_type)):
        raise _violation("content_type", f"{content_type[:80]!r} is not a media type such as image/png",
                         "CONTENT_TYPE_INVALID")
    return content_type


def input_key(tenant: str, sha256: str, filename: str) -> str:
    return f"{tenant}/{sha256}/{filename}"


def input_key_belongs_to(tenant: str, key: str) -> bool:
    """Whether `key` is an input key of `tenant`'s (as UploadInput makes them): `{tenant}/{sha256}/{name}`, with no
    `..`, empty or absolute part that could make the same text mean another tenant's object."""
    if not tenant or "/" in tenant or not key.startswith(f"{tenant}/"):
        return False
    parts = key.split("/")
    if len(parts) < 3 or any(part in ("", ".", "..") for part in parts):
        return False
    digest = parts[1]
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def output_name(output: Mapping[str, Any]) -> str:
    subfolder = str(output.get("subfolder") or "").strip("/")
    filename = str(output.get("filename") or "")
    return f"{subfolder}/{filename}" if subfolder else filename


def _object_key(output: Mapping[str, Any]) -> str:
    return str(output.get("object_key") or output.get("objectKey") or "")


def output_refs(record: ExecutionRecord) -> list[OutputRef]:
    return [OutputRef(output_name(o), _object_key(o),
                      str(o.get("content_type") or o.get("contentType") or DEFAULT_CONTENT_TYPE),
                      str(o.get("type") or ""))
            for o in record.outputs if _object_key(o)]


class WorkflowFiles:
    """Uploads inputs, reads outputs and signs output URLs. `store` is None when no object store is configured
    (COMFYMESH_S3_ENDPOINT empty): file RPCs then answer UNAVAILABLE and executions carry no URLs."""

    def __init__(self, store: ObjectStore | None, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._inputs_bucket_ready = False

    @property
    def inputs_bucket(self) -> str:
        return f"{self._settings.s3_bucket_prefix}-inputs"

    @property
    def outputs_bucket(self) -> str:
        return f"{self._settings.s3_bucket_prefix}-outputs"

    def _require_store(self) -> ObjectStore:
        if self._store is None:
            raise unavailable("no object store is configured (COMFYMESH_S3_ENDPOINT)", retry_after_seconds=None)
        return self._store

    async def upload_input(self, tenant: str, filename: str, data: bytes, content_type: str = "") -> StoredInput:
        name = clean_filename(filename)
        if not data:
            raise _violation("data", "the file is empty", "DATA_EMPTY")
        limit = self._settings.max_inline_input_bytes
        if len(data) > limit:
            raise _violation("data", f"the file is {len(data)} bytes, more than the {limit} allowed",
                             "DATA_TOO_LARGE", size_bytes=str(len(data)), limit_bytes=str(limit))
        media_type = _check_content_type(content_type, name)
        store = self._require_store()
        digest = (await asyncio.to_thread(hashlib.sha256, data)).hexdigest()
        key = input_key(tenant, digest, name)
        if not self._inputs_bucket_ready:
            await store.ensure_bucket(self.inputs_bucket)
            self._inputs_bucket_ready = True
        await store.put_bytes(self.inputs_bucket, key, data, media_type)
        return StoredInput(key, digest, len(data), media_type)

    def find_output(self, record: ExecutionRecord, filename: str) -> OutputRef:
        """The record's output named `filename` (an "output" file before a "temp" one of the same name)."""
        matches = [ref for ref in output_refs(record) if ref.name == filename]
        if not matches:
            raise not_found(f"execution {record.id} has no output {filename[:200]!r}", Reason.RESOURCE_NOT_FOUND,
                            execution_id=record.id, filename=filename[:200])
        return next((ref for ref in matches if ref.type == "output"), matches[0])

    async def open_output(self, record: ExecutionRecord, filename: str) -> OutputDownload:
        """Starts reading an output: fails here (NOT_FOUND), before any byte is sent, when it is not there."""
        ref = self.find_output(record, filename)
        store = self._require_store()
        # iter_chunks is an async generator: reading its first chunk opens the object (or fails).
        chunks = cast(AsyncGenerator[bytes, None], store.iter_chunks(self.outputs_bucket, ref.object_key, CHUNK_SIZE))
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        except ServiceError as exc:
            if exc.reason != Reason.RESOURCE_NOT_FOUND:
                raise
            raise not_found(f"output {filename[:200]!r} of execution {record.id} is no longer stored",
                            Reason.RESOURCE_NOT_FOUND, execution_id=record.id, filename=filename[:200]) from exc
        return OutputDownload(ref.name, ref.content_type, first, chunks)

    async def presigned_urls(self, record: ExecutionRecord) -> dict[str, PresignedUrl]:
        """A presigned GET URL for every output, by object key (empty without an object store)."""
        if self._store is None:
            return {}
        ttl = self._settings.presigned_url_ttl_seconds
        keys = list(dict.fromkeys(ref.object_key for ref in output_refs(record)))
        expire = datetime.now(UTC) + timedelta(seconds=ttl)
        try:
            urls = await asyncio.gather(*(self._store.presigned_get_url(self.outputs_bucket, key, ttl)
                                          for key in keys))
        except ServiceError as exc:  # signing is local; should it fail, the execution is still worth returning
            log.warning("could not sign output URLs of execution %s: %s", record.id, exc)
            return {}
        return {key: PresignedUrl(url, expire) for key, url in zip(keys, urls, strict=True)}
