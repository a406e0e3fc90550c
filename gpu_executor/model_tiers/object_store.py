"""The object-store tier: model files in an S3 bucket, streamed into the disk tier chunk by chunk.

The object is never held whole in memory: `ObjectStore.iter_chunks` yields chunks (1 MiB by default) that the disk
tier hashes and writes as they arrive, while the next few are read from the network. A stat first turns a missing
key into RESOURCE_NOT_FOUND and a size that cannot match into MODEL_CHECKSUM_MISMATCH before the disk tier evicts
anything to make room.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from gpu_executor.model_tiers.disk import DiskTier, checksum_mismatch
from service_runtime.object_store import CHUNK_SIZE, ObjectStore

READ_AHEAD = 4  # chunks read from the network while the disk tier hashes and writes the current one


@dataclass(frozen=True)
class FetchResult:
    path: Path
    bytes_transferred: int  # bytes read from the object store by this call
    seconds: float
    downloaded: bool  # False: the file was already on disk, or a concurrent fetch of the same sha256 wrote it


class _Transfer:
    def __init__(self) -> None:
        self.bytes = 0
        self.started = False


class ObjectStoreTier:
    """Objects of one bucket, fetched into a DiskTier with sha256 verification."""

    tier = "object_store"

    def __init__(self, store: ObjectStore, bucket: str, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.store, self.bucket, self._chunk_size = store, bucket, chunk_size

    async def fetch_into(self, disk: DiskTier, key: str, sha256: str, size: int, *,
                         name: str | None = None) -> FetchResult:
        """Makes the object `key` (expected: `size` bytes with digest `sha256`) a file of `disk` and returns it.

        Raises RESOURCE_NOT_FOUND for a missing key and MODEL_CHECKSUM_MISMATCH when the bytes are not the expected
        ones (nothing is left on disk then); an interrupted download leaves no file either.
        """
        start = time.perf_counter()
        existing = await asyncio.to_thread(disk.path_for, sha256, name=name)
        if existing is not None:
            return FetchResult(existing, 0, time.perf_counter() - start, False)
        info = await self.store.stat(self.bucket, key)
        if info.size != size:
            raise checksum_mismatch(sha256.lower(), f"object {self.bucket}/{key} has {info.size} bytes, expected "
                                    f"{size}", expected_size=str(size), actual_size=str(info.size),
                                    bucket=self.bucket, key=key)
        transfer = _Transfer()
        async with aclosing(self._chunks(key, transfer)) as chunks:
            path = await disk.admit_async(sha256, chunks, size, name=name)
        return FetchResult(path, transfer.bytes, time.perf_counter() - start, transfer.started)

    async def _chunks(self, key: str, transfer: _Transfer) -> AsyncGenerator[bytes, None]:
        """The object's chunks, read ahead of the consumer (up to READ_AHEAD chunks), so the network read of the
        next chunks overlaps the hashing and writing of this one."""
        transfer.started = True
        chunks: AsyncIterator[bytes] = self.store.iter_chunks(self.bucket, key, self._chunk_size)
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(READ_AHEAD)

        async def produce() -> None:
            try:
                async for chunk in chunks:
                    await queue.put(chunk)
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                await queue.put(exc)

        producer = asyncio.create_task(produce())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                transfer.bytes += len(item)
                yield item
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            aclose = getattr(chunks, "aclose", None)  # an async generator: releases the HTTP connection now
            if aclose is not None:
                await aclose()
