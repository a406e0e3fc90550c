"""Input files of an execution, written into the executor's input directory before the graph runs.

Each `InputSpec` (the `comfymesh.common.v1.InputFile` message, as a plain dataclass so that this module needs no
generated code) names a file relative to the target directory and one source: inline bytes, an object key in the
inputs bucket, or an http(s) URL. `materialize_inputs` checks every spec first (names, sources, sha256 format), then
writes the files one by one:

* each file is streamed into a temporary file next to its destination and moved into place with `os.replace`, so
  a file is either complete and verified or not there at all;
* URL bodies go through `url_guard.open_checked` (vetted, pinned addresses; redirects re-checked per hop) under one
  deadline of `url_timeout` seconds for the whole fetch, and are aborted as soon as they pass `max_url_bytes`;
* the sha256, when given, is checked before the file is moved into place;
* on any failure the files this call already wrote are removed again, and the error is a typed ServiceError
  whose metadata names the input (`input`, and `input_index`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Protocol

import grpc
import httpx

from gpu_executor.io import url_guard
from service_runtime.errors import FieldViolation, Reason, ServiceError

if TYPE_CHECKING:
    from service_runtime.object_store import ObjectStore

_FLUSH_BYTES = 1 << 20  # buffered writes go to disk (in a worker thread) in pieces of about this size
_MAX_NAME_LENGTH = 1024
_MAX_COMPONENT_LENGTH = 255
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_USER_AGENT = "comfymesh-executor"


class _InputFileMessage(Protocol):
    """The fields of `comfymesh.common.v1.InputFile` that `InputSpec.from_message` reads."""

    name: str
    data: bytes
    object_key: str
    url: str
    content_type: str
    sha256: str

    def WhichOneof(self, oneof_group: str) -> str | None: ...


@dataclass(frozen=True)
class InputSpec:
    """One input file: exactly one of `data`, `object_key` and `url` is set (the proto's `source` oneof)."""

    name: str
    data: bytes | None = None
    object_key: str | None = None
    url: str | None = None
    content_type: str = ""
    sha256: str = ""  # expected hex digest; checked after fetching when set

    @classmethod
    def from_message(cls, message: _InputFileMessage) -> InputSpec:
        """From an `InputFile` message (duck-typed: no protobuf import here)."""
        source = message.WhichOneof("source")
        return cls(name=message.name,
                   data=message.data if source == "data" else None,
                   object_key=message.object_key if source == "object_key" else None,
                   url=message.url if source == "url" else None,
                   content_type=message.content_type, sha256=message.sha256)

    @property
    def source(self) -> str:
        """Which source is set: "data", "object_key" or "url" ("" for none, "+"-joined when several are)."""
        return "+".join(name for name, value in (("data", self.data), ("object_key", self.object_key),
                                                 ("url", self.url)) if value is not None)


# -- errors ----------------------------------------------------------------------------------------------------


def _invalid(index: int, name: str, field: str, message: str, sub_reason: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.INPUT_INVALID, message,
                        {"input": name, "input_index": str(index), **metadata},
                        (FieldViolation(f"inputs[{index}].{field}", message, sub_reason),))


def _with_input(error: ServiceError, index: int, name: str) -> ServiceError:
    """The same error with the input named in its metadata."""
    return dataclasses.replace(error, metadata={**error.metadata, "input": name, "input_index": str(index)})


# -- validation ------------------------------------------------------------------------------------------------


def _relative_name(index: int, name: str) -> PurePosixPath:
    """The name as a relative path inside the target directory; refuses anything that could leave it."""
    def refuse(why: str, sub_reason: str) -> ServiceError:
        return _invalid(index, name, "name", f"input name {name[:80]!r} {why}", sub_reason)

    if not name or not name.strip():
        raise refuse("is empty", "NAME_EMPTY")
    if len(name) > _MAX_NAME_LENGTH:
        raise refuse(f"is longer than {_MAX_NAME_LENGTH} characters", "NAME_TOO_LONG")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name) or "\\" in name:
        raise refuse("contains a control character or a backslash", "NAME_CHARACTERS")
    if name.startswith("/"):
        raise refuse("is absolute", "NAME_ABSOLUTE")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise refuse("escapes the input directory (..)", "NAME_ESCAPES")
    parts = [part for part in path.parts if part != "."]
    if not parts:
        raise refuse("names no file", "NAME_EMPTY")
    if any(len(part.encode()) > _MAX_COMPONENT_LENGTH for part in parts):
        raise refuse(f"has a path component longer than {_MAX_COMPONENT_LENGTH} bytes", "NAME_TOO_LONG")
    return PurePosixPath(*parts)


def _validate(inputs: list[InputSpec], *, max_inline_bytes: int) -> list[PurePosixPath]:
    seen: dict[PurePosixPath, int] = {}
    names: list[PurePosixPath] = []
    for index, spec in enumerate(inputs):
        relative = _relative_name(index, spec.name)
        if relative in seen:
            raise _invalid(index, spec.name, "name", f"input name {spec.name!r} is given twice "
                           f"(inputs[{seen[relative]}] and inputs[{index}])", "NAME_DUPLICATE")
        seen[relative] = index
        names.append(relative)
        if spec.source not in ("data", "object_key", "url"):
            raise _invalid(index, spec.name, "source", f"input {spec.name!r} needs exactly one of data, object_key "
                           f"and url (has {spec.source or 'none'})", "SOURCE_MISSING")
        if spec.sha256 and not _SHA256_HEX.match(spec.sha256):
            raise _invalid(index, spec.name, "sha256", "sha256 must be 64 hex digits", "SHA256_MALFORMED")
        if spec.data is not None and len(spec.data) > max_inline_bytes:
            raise _invalid(index, spec.name, "data", f"inline input {spec.name!r} is {len(spec.data)} bytes, "
                           f"more than the {max_inline_bytes} allowed inline; upload it and pass object_key",
                           "INLINE_TOO_LARGE", size_bytes=str(len(spec.data)), limit_bytes=str(max_inline_bytes))
        if spec.object_key is not None and not spec.object_key.strip():
            raise _invalid(index, spec.name, "object_key", "object_key is empty", "OBJECT_KEY_EMPTY")
    # "a" and "a/b" cannot both be files.
    for index, relative in enumerate(names):
        for parent in relative.parents:
            if parent in seen and parent != PurePosixPath("."):
                raise _invalid(index, inputs[index].name, "name", f"input name {inputs[index].name!r} is inside "
                               f"inputs[{seen[parent]}] ({inputs[seen[parent]].name!r}), which is a file",
                               "NAME_CONFLICT")
    return names


# -- atomic writes ---------------------------------------------------------------------------------------------


class _AtomicFile:
    """A temporary file next to `final`, hashed as it is written, moved into place by `commit`."""

    def __init__(self, final: Path) -> None:
        self.final = final
        fd, temp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name[:64]}.", suffix=".part")
        self._temp = Path(temp)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await asyncio.to_thread(self._write, data)

    async def finish(self) -> str:
        """Writes out what is buffered and closes the temporary file; the hex sha256 of everything written."""
        await self._flush()
        self._file.close()
        return self._hash.hexdigest()

    def commit(self) -> None:
        os.replace(self._temp, self.final)

    def discard(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


# -- sources ---------------------------------------------------------------------------------------------------


async def _chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _FLUSH_BYTES):
        yield data[start:start + _FLUSH_BYTES]


async def _write_chunks(file: _AtomicFile, chunks: AsyncIterator[bytes]) -> None:
    async for chunk in chunks:
        await file.write(chunk)


async def _fetch_url(file: _AtomicFile, client: httpx.AsyncClient, index: int, spec: InputSpec, *,
                     max_url_bytes: int, url_timeout: float, allow_private_urls: bool) -> None:
    assert spec.url is not None
    url = spec.url
    field = f"inputs[{index}].url"
    try:
        async with asyncio.timeout(url_timeout):
            async with url_guard.open_checked(client, url, allow_private=allow_private_urls, field=field,
                                              headers={"Accept-Encoding": "identity",
                                                       "User-Agent": _USER_AGENT}) as response:
                if not response.is_success:
                    retryable = response.status_code >= 500 or response.status_code in (408, 425, 429)
                    raise url_guard.fetch_failed(f"{url_guard.redact_url(url)} answered HTTP {response.status_code}",
                                                 retryable=retryable, url=url, status=str(response.status_code))
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_url_bytes:
                    raise _too_large(url, max_url_bytes, declared=declared)
                async for chunk in response.aiter_bytes():
                    if file.size + len(chunk) > max_url_bytes:
                        raise _too_large(url, max_url_bytes)
                    await file.write(chunk)
    except TimeoutError:
        raise url_guard.fetch_failed(f"fetching {url_guard.redact_url(url)} took more than {url_timeout:g}s",
                                     retryable=True, url=url, timeout_seconds=f"{url_timeout:g}") from None
    except httpx.TimeoutException as exc:
        raise url_guard.fetch_failed(f"timed out reading {url_guard.redact_url(url)}: {type(exc).__name__}",
                                     retryable=True, url=url, timeout_seconds=f"{url_timeout:g}") from exc
    except httpx.HTTPError as exc:
        raise url_guard.fetch_failed(f"reading {url_guard.redact_url(url)} failed: {type(exc).__name__}: {exc}",
                                     retryable=True, url=url) from exc


def _too_large(url: str, limit: int, *, declared: str = "") -> ServiceError:
    size = f" (Content-Length {declared})" if declared else ""
    extra = {"content_length": declared} if declared else {}
    return url_guard.fetch_failed(f"{url_guard.redact_url(url)} is larger than the {limit} bytes allowed{size}",
                                  retryable=False, url=url, limit_bytes=str(limit), **extra)


async def _write_one(index: int, spec: InputSpec, final: Path, *, store: ObjectStore | None, inputs_bucket: str,
                     client: httpx.AsyncClient | None, max_url_bytes: int, url_timeout: float,
                     allow_private_urls: bool) -> None:
    file = _AtomicFile(final)
    try:
        if spec.data is not None:
            await _write_chunks(file, _chunks_of(spec.data))
        elif spec.object_key is not None:
            if store is None:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.INPUT_INVALID,
                                   f"input {spec.name!r} names an object key but this executor has no object store",
                                   {"object_key": spec.object_key})
            try:
                await _write_chunks(file, store.iter_chunks(inputs_bucket, spec.object_key))
            except ServiceError as exc:
                if exc.reason != Reason.RESOURCE_NOT_FOUND:
                    raise
                raise ServiceError(grpc.StatusCode.NOT_FOUND, Reason.INPUT_INVALID,
                                   f"input {spec.name!r}: no object {spec.object_key!r} in bucket {inputs_bucket!r}",
                                   {"bucket": inputs_bucket, "object_key": spec.object_key},
                                   (FieldViolation(f"inputs[{index}].object_key", "no such object",
                                                   "OBJECT_NOT_FOUND"),)) from exc
        else:
            assert client is not None  # made whenever an input has a URL
            await _fetch_url(file, client, index, spec, max_url_bytes=max_url_bytes, url_timeout=url_timeout,
                             allow_private_urls=allow_private_urls)
        digest = await file.finish()
        if spec.sha256 and digest != spec.sha256.lower():
            raise _invalid(index, spec.name, "sha256", f"input {spec.name!r} has sha256 {digest}, "
                           f"not the {spec.sha256.lower()} expected", "SHA256_MISMATCH",
                           expected_sha256=spec.sha256.lower(), actual_sha256=digest, size_bytes=str(file.size))
        file.commit()
    except BaseException:
        file.discard()
        raise


def _make_root(target_dir: Path) -> Path:
    target_dir.mkdir(parents=True, exist_ok=True)
    return target_dir.resolve()


def _destination(root: Path, relative: PurePosixPath) -> Path | None:
    """root/relative with its parent directories made; None when a symbolic link already there leads outside root."""
    final = root.joinpath(*relative.parts)
    existing = final.parent
    while not (existing.exists() or existing.is_symlink()):  # checked before mkdir creates anything through it
        existing = existing.parent
    if not existing.resolve().is_relative_to(root):
        return None
    final.parent.mkdir(parents=True, exist_ok=True)
    return final if final.parent.resolve().is_relative_to(root) else None


async def materialize_inputs(inputs: list[InputSpec], target_dir: Path, *, store: ObjectStore | None,
                             inputs_bucket: str, max_inline_bytes: int, max_url_bytes: int, url_timeout: float,
                             allow_private_urls: bool,
                             http_client: httpx.AsyncClient | None = None) -> dict[str, Path]:
    """Writes every input to `target_dir/<name>`; returns name → path. All or nothing: a typed ServiceError
    (metadata `input`, `input_index`) after removing what this call had written.

    `http_client` is for tests (a mock transport); by default each call uses a client of its own that ignores
    proxy settings from the environment (a proxy would defeat address pinning) and never reuses connections
    (a pooled connection to a shared IP could carry another host's request under the first host's TLS name).
    """
    names = _validate(inputs, max_inline_bytes=max_inline_bytes)
    root = await asyncio.to_thread(_make_root, target_dir)
    written: list[Path] = []
    if not inputs:
        return {}
    # Only URL inputs need a client (making one builds a TLS context: tens of milliseconds).
    needs_client = http_client is None and any(spec.url is not None for spec in inputs)
    client = http_client or httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=httpx.Timeout(url_timeout),
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=0)) if needs_client else http_client
    try:
        for index, (spec, relative) in enumerate(zip(inputs, names, strict=True)):
            try:
                final = await asyncio.to_thread(_destination, root, relative)
                if final is None:
                    raise _invalid(index, spec.name, "name", f"input name {spec.name!r} escapes the input "
                                   "directory through a symbolic link", "NAME_ESCAPES")
                await _write_one(index, spec, final, store=store, inputs_bucket=inputs_bucket, client=client,
                                 max_url_bytes=max_url_bytes, url_timeout=url_timeout,
                                 allow_private_urls=allow_private_urls)
            except ServiceError as exc:
                raise _with_input(exc, index, spec.name) from exc.__cause__
            except OSError as exc:
                raise ServiceError(grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR,
                                   f"writing input {spec.name!r} failed: {exc}",
                                   {"input": spec.name, "input_index": str(index)}) from exc
            written.append(final)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        if http_client is None and client is not None:
            await client.aclose()
    return {spec.name: path for spec, path in zip(inputs, written, strict=True)}
