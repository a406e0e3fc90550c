"""S3-compatible object storage through the `minio` client (SeaweedFS locally and in tests, MinIO/S3 in production).

The minio client is synchronous; every call runs in a worker thread so the event loop never blocks on the network.
Uploads stream in multipart parts (no whole-file buffering); downloads are async iterators of chunks.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, TypeVar

import grpc
import urllib3
from minio import Minio
from minio.error import S3Error

from service_runtime.errors import Reason, ServiceError, not_found, unavailable
from service_runtime.settings import Settings

PART_SIZE = 16 << 20  # multipart part size for streams of unknown length
CHUNK_SIZE = 1 << 20  # download chunk size
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str
    content_type: str


class _IterableReader(io.RawIOBase):
    """Adapts an iterable of byte chunks to the file-like `read` minio's streaming put expects."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class ObjectStore:
    """Buckets and objects; errors come out as typed ServiceErrors (NOT_FOUND, UNAVAILABLE)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, *, secure: bool = False,
                 region: str = "us-east-1") -> None:
        # Short connect/read timeouts with retries: a dead endpoint must fail fast, not hang an RPC.
        http = urllib3.PoolManager(
            maxsize=32,
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                             http_client=http)
        self.endpoint = endpoint

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        if not settings.s3_endpoint:
            raise ValueError("COMFYMESH_S3_ENDPOINT is empty; `make run` starts SeaweedFS, otherwise set it")
        return cls(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                   secure=settings.s3_secure, region=settings.s3_region)

    @staticmethod
    async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise not_found(f"object not found: {exc.bucket_name}/{exc.object_name}",
                                bucket=str(exc.bucket_name), key=str(exc.object_name)) from exc
            raise ServiceError(_s3_code(exc), Reason.BACKEND_UNAVAILABLE, f"object store error: {exc.code}",
                               {"s3_code": str(exc.code)}) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise unavailable(f"object store unreachable at {args[0] if args else ''}: {exc}") from exc

    async def ensure_bucket(self, bucket: str) -> None:
        if not await self._run(self._client.bucket_exists, bucket):
            try:
                await self._run(self._client.make_bucket, bucket)
            except ServiceError as exc:  # created concurrently by another replica
                if exc.metadata.get("s3_code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def put_bytes(self, bucket: str, key: str, data: bytes,
                        content_type: str = "application/octet-stream") -> ObjectInfo:
        result = await self._run(self._client.put_object, bucket, key, io.BytesIO(data), len(data),
                                 content_type=content_type)
        return ObjectInfo(bucket, key, len(data), result.etag or "", content_type)

    async def put_stream(self, bucket: str, key: str, source: BinaryIO | Iterable[bytes], *, length: int = -1,
                         content_type: str = "application/octet-stream") -> ObjectInfo:
        """Uploads from a file object or an iterable of chunks (run in a thread), multipart when large."""
        reader = source if hasattr(source, "read") else _IterableReader(source)  # type: ignore[arg-type]
        await self._run(self._client.put_object, bucket, key, reader, length, content_type=content_type,
                        part_size=PART_SIZE)
        return await self.stat(bucket, key)

    async def put_file(self, bucket: str, key: str, path: str,
                       content_type: str = "application/octet-stream") -> ObjectInfo:
        await self._run(self._client.fput_object, bucket, key, path, content_type=content_type, part_size=PART_SIZE)
        return await self.stat(bucket, key)

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        st = await self._run(self._client.stat_object, bucket, key)
        return ObjectInfo(bucket, key, int(st.size or 0), st.etag or "", st.content_type or "")

    async def exists(self, bucket: str, key: str) -> bool:
        try:
            await self.stat(bucket, key)
        except ServiceError as exc:
            if exc.reason == Reason.RESOURCE_NOT_FOUND:
                return False
            raise
        return True

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks(bucket, key)])

    async def iter_chunks(self, bucket: str, key: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Streams an object without holding it whole in memory."""
        response = await self._run(self._client.get_object, bucket, key)
        try:
            while True:
                chunk = await asyncio.to_thread(response.read, chunk_size)
                if not chunk:
                    break
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def fget(self, bucket: str, key: str, path: str) -> None:
        await self._run(self._client.fget_object, bucket, key, path)

    async def delete(self, bucket: str, key: str) -> None:
        await self._run(self._client.remove_object, bucket, key)

    async def presigned_get_url(self, bucket: str, key: str, ttl_seconds: int) -> str:
        url: str = await self._run(self._client.presigned_get_object, bucket, key, timedelta(seconds=ttl_seconds))
        return url

    async def presigned_put_url(self, bucket: str, key: str, ttl_seconds: int) -> str:
        url: str = await self._run(self._client.presigned_put_object, bucket, key, timedelta(seconds=ttl_seconds))
        return url


def _s3_code(exc: S3Error) -> grpc.StatusCode:
    if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.UNAVAILABLE
