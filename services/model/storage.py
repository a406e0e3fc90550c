"""The models bucket (`<s3_bucket_prefix>-models`) as ModelService writes it.

Layout (the one the executors resolve names from, gpu_executor/model_tiers/bucket.py): a model is the object
`<folder>/<name>` with its hex sha256 in the sidecar object `<folder>/<name>.sha256`, written only after the file
validated (an executor refuses a model object without a recorded sha256, so a file is never used unverified).
Presigned uploads land in `_uploads/<tenant>/<upload id>`, outside every model folder.

Streaming writes go through `_Pipe`: the async producer (an upload stream, an object, an HTTP body, each chunk
validated on the way) feeds minio's multipart put running in a worker thread. If the producer fails (bad bytes,
a client that went away), the pipe raises inside minio's read, which aborts the multipart upload: an object that
did not validate never appears in the bucket.
"""

from __future__ import annotations

import asyncio
import io
import queue
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import S3Error

from service_runtime.errors import Reason, ServiceError, not_found, unavailable
from service_runtime.object_store import ObjectInfo, ObjectStore
from service_runtime.settings import Settings
from services.model.domain import sidecar_key

READ_CHUNK_BYTES = 4 << 20
PIPE_CHUNKS = 32  # chunks buffered between the producer and the uploading thread
T = TypeVar("T")


class _Pipe(io.RawIOBase):
    """Bytes from the event loop to a reader in a worker thread, with back-pressure (a bounded number of chunks in
    flight) and abort: `fail(exc)` makes the reader raise `exc`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_chunks: int = PIPE_CHUNKS, *,
                 inspect: Callable[[bytes], None] | None = None, at_end: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._inspect = inspect
        self._at_end = at_end
        self._queue: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self._space = asyncio.Semaphore(max_chunks)
        self._item = b""
        self._pending = memoryview(b"")
        self._eof = False
        self.reader_gone = False

    # -- the producer (event loop) --

    async def send(self, chunk: bytes) -> None:
        await self._space.acquire()
        if self.reader_gone:
            raise ConnectionAbortedError("the object store upload stopped")
        self._queue.put(chunk)

    def close_input(self) -> None:
        self._queue.put(None)

    def fail(self, exc: BaseException) -> None:
        self._queue.put(exc)

    def reader_done(self) -> None:
        """Called when the uploading thread has finished: wakes a producer waiting for space."""
        self.reader_gone = True
        for _ in range(PIPE_CHUNKS + 1):
            self._space.release()

    # -- the reader (worker thread) --

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = -1 if size is None else size
        parts: list[bytes] = []
        have = 0
        while wanted < 0 or have < wanted:
            if not self._pending:
                if self._eof:
                    break
                item = self._queue.get()
                self._loop.call_soon_threadsafe(self._space.release)
                if item is None:
                    self._eof = True
                    if self._at_end is not None:
                        self._at_end()  # raising here aborts the upload before the store sees its end
                    break
                if isinstance(item, BaseException):
                    self._eof = True
                    raise item
                if self._inspect is not None:
                    try:
                        self._inspect(item)
                    except BaseException:
                        self._eof = True
                        raise
                self._item = item
                self._pending = memoryview(item)
            take = len(self._pending) if wanted < 0 else min(len(self._pending), wanted - have)
            whole = take == len(self._pending) == len(self._item)
            parts.append(self._item if whole else bytes(self._pending[:take]))  # a whole chunk is not copied
            self._pending = self._pending[take:]
            have += take
        return b"".join(parts)


def _finished(pipe: _Pipe) -> Callable[[asyncio.Future[ObjectInfo]], None]:
    def done(put: asyncio.Future[ObjectInfo]) -> None:
        pipe.reader_done()
        if not put.cancelled():
            put.exception()  # retrieved here: a put failing after its producer gave up is not logged as lost

    return done


@dataclass(frozen=True)
class StoredPart:
    number: int
    size: int
    etag: str


class ModelStorage:
    """The models bucket: streaming writes, sidecars, presigned URLs (single and multipart uploads)."""

    def __init__(self, store: ObjectStore, bucket: str, client: Minio) -> None:
        self.store, self.bucket, self._client = store, bucket, client
        self._bucket_ready = False

    @classmethod
    def from_settings(cls, store: ObjectStore, settings: Settings) -> ModelStorage:
        http = urllib3.PoolManager(maxsize=16, timeout=urllib3.Timeout(connect=5, read=60),
                                   retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                                         status_forcelist=(500, 502, 503, 504)))
        client = Minio(settings.s3_endpoint, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                       secure=settings.s3_secure, region=settings.s3_region, http_client=http)
        return cls(store, f"{settings.s3_bucket_prefix}-models", client)

    async def ensure_bucket(self) -> None:
        if not self._bucket_ready:
            await self.store.ensure_bucket(self.bucket)
            self._bucket_ready = True

    async def write(self, key: str, chunks: AsyncIterator[bytes], *, inspect: Callable[[bytes], None] | None = None,
                    at_end: Callable[[], None] | None = None) -> ObjectInfo:
        """Streams `chunks` into `key` (multipart); nothing is stored when `chunks`, `inspect` or `at_end` raises.

        `inspect` sees every chunk, in order, and `at_end` runs once after the last, both in the uploading thread
        (so checksumming and validation run beside the event loop, not on it), before the store is told the
        object is complete.
        """
        await self.ensure_bucket()
        pipe = _Pipe(asyncio.get_running_loop(), inspect=inspect, at_end=at_end)
        put = asyncio.ensure_future(self.store.put_stream(self.bucket, key, pipe))
        put.add_done_callback(_finished(pipe))
        try:
            async for chunk in chunks:
                await pipe.send(chunk)
        except BaseException as exc:
            if isinstance(exc, ConnectionAbortedError) and put.done() and not put.cancelled() \
                    and put.exception() is not None:
                raise put.exception() from None  # type: ignore[misc]  # the store's own error
            pipe.fail(exc if isinstance(exc, Exception) else ConnectionAbortedError("the upload was cancelled"))
            await asyncio.wait([put])  # minio aborts the multipart upload; the producer's error is the one to report
            raise
        pipe.close_input()
        return await put

    async def write_sidecar(self, key: str, sha256: str) -> None:
        await self.store.put_bytes(self.bucket, sidecar_key(key), f"{sha256}  {key.rsplit('/', 1)[-1]}\n".encode(),
                                   content_type="text/plain")

    async def read(self, key: str, bucket: str | None = None) -> AsyncIterator[bytes]:
        async for chunk in self.store.iter_chunks(bucket or self.bucket, key, READ_CHUNK_BYTES):
            yield chunk

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            return await self.store.stat(self.bucket, key)
        except ServiceError as exc:
            if exc.reason == Reason.RESOURCE_NOT_FOUND:
                return None
            raise

    async def delete_model_objects(self, key: str) -> None:
        """Removes a model's object and its sidecar (missing ones are fine)."""
        for name in (sidecar_key(key), key):
            await self.delete(name)

    async def delete(self, key: str) -> None:
        try:
            await self.store.delete(self.bucket, key)
        except ServiceError as exc:
            if exc.reason != Reason.RESOURCE_NOT_FOUND:
                raise

    async def presigned_get(self, key: str, ttl_seconds: int) -> str:
        return await self.store.presigned_get_url(self.bucket, key, ttl_seconds)

    async def presigned_put(self, key: str, ttl_seconds: int) -> str:
        await self.ensure_bucket()
        return await self.store.presigned_put_url(self.bucket, key, ttl_seconds)

    # -- multipart presigned uploads (minio's low-level S3 calls) --

    async def create_multipart(self, key: str) -> str:
        await self.ensure_bucket()
        upload_id: str = await self._run(self._client._create_multipart_upload, self.bucket, key,
                                         {"Content-Type": "application/octet-stream"})
        return upload_id

    async def presigned_part(self, key: str, multipart_id: str, part_number: int, ttl_seconds: int) -> str:
        url: str = await self._run(self._client.get_presigned_url, "PUT", self.bucket, key,
                                   timedelta(seconds=ttl_seconds),
                                   extra_query_params={"partNumber": str(part_number), "uploadId": multipart_id})
        return url

    async def list_parts(self, key: str, multipart_id: str) -> dict[int, StoredPart]:
        def collect() -> dict[int, StoredPart]:
            found: dict[int, StoredPart] = {}
            marker = 0
            while True:
                result = self._client._list_parts(self.bucket, key, multipart_id, max_parts=1000,
                                                  part_number_marker=str(marker))
                for part in result.parts:
                    found[part.part_number] = StoredPart(part.part_number, int(part.size or 0), part.etag)
                if not result.is_truncated or not result.parts:
                    return found
                marker = int(result.next_part_number_marker or 0)

        try:
            return await self._run(collect)
        except ServiceError as exc:
            if exc.reason == Reason.RESOURCE_NOT_FOUND:
                return {}
            raise

    async def complete_multipart(self, key: str, multipart_id: str, parts: list[StoredPart]) -> None:
        await self._run(self._client._complete_multipart_upload, self.bucket, key, multipart_id,
                        [Part(p.number, p.etag) for p in sorted(parts, key=lambda p: p.number)])

    async def abort_multipart(self, key: str, multipart_id: str) -> None:
        try:
            await self._run(self._client._abort_multipart_upload, self.bucket, key, multipart_id)
        except ServiceError as exc:
            if exc.reason != Reason.RESOURCE_NOT_FOUND:
                raise

    @staticmethod
    async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NoSuchUpload"):
                raise not_found(f"not found in the object store: {exc.code}", s3_code=str(exc.code)) from exc
            code = grpc.StatusCode.INVALID_ARGUMENT if exc.code in ("InvalidPart", "InvalidPartOrder",
                                                                     "EntityTooSmall") else grpc.StatusCode.UNAVAILABLE
            raise ServiceError(code, Reason.UPLOAD_INCOMPLETE if code == grpc.StatusCode.INVALID_ARGUMENT
                               else Reason.BACKEND_UNAVAILABLE, f"object store error: {exc.code}: {exc.message}",
                               {"s3_code": str(exc.code)}) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise unavailable(f"object store unreachable: {exc}") from exc
