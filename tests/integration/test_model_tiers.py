"""The disk and object-store tiers of the model cache against a real SeaweedFS: a 40 MB model fetched once and
then served from disk, verified by sha256, typed errors, and interrupted downloads that leave nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gpu_executor.model_tiers import DiskTier, ModelFileCache, ObjectStoreTier
from gpu_executor.model_tiers.disk import TEMP_PREFIX
from service_runtime.errors import Reason, ServiceError
from service_runtime.object_store import ObjectStore
from service_runtime.processes import SeaweedFSServer

pytestmark = pytest.mark.integration

MODEL_SIZE = 40 * 1000 * 1000
CHUNK = 1 << 20


@pytest.fixture
async def store(seaweedfs: SeaweedFSServer) -> ObjectStore:
    return ObjectStore(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)


@pytest.fixture
async def bucket(store: ObjectStore) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    await store.ensure_bucket(name)
    return name


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return os.urandom(MODEL_SIZE)


@pytest.fixture
async def model(store: ObjectStore, bucket: str, model_bytes: bytes) -> tuple[str, str, int]:
    """(key, sha256, size) of a 40 MB random model uploaded in chunks."""
    key = "checkpoints/random-40mb.safetensors"
    info = await store.put_stream(bucket, key, (model_bytes[i:i + CHUNK] for i in range(0, MODEL_SIZE, CHUNK)),
                                  length=MODEL_SIZE)
    assert info.size == MODEL_SIZE
    return key, hashlib.sha256(model_bytes).hexdigest(), MODEL_SIZE


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def sample(name: str, tier: str) -> float:
    return REGISTRY.get_sample_value(name, {"tier": tier}) or 0.0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def test_miss_fetches_from_the_object_store_then_hits_disk(
        tmp_path: Path, store: ObjectStore, bucket: str, model: tuple[str, str, int]) -> None:
    key, sha, size = model
    disk = DiskTier(tmp_path / "disk", 100 * 1000 * 1000)
    cache = ModelFileCache(disk, ObjectStoreTier(store, bucket))
    remote_loads = sample("model_load_time_seconds_count", "object_store")
    disk_loads = sample("model_load_time_seconds_count", "disk")

    first = await cache.local_path("random-40mb.safetensors", sha, size, key)
    assert first == disk.file_path(sha) and first.stat().st_size == size
    assert file_sha256(first) == sha
    disk_stats, remote_stats = cache.stats()
    assert (disk_stats.hits, disk_stats.misses) == (0, 1)
    assert (remote_stats.hits, remote_stats.misses, remote_stats.bytes_loaded) == (1, 0, size)
    assert remote_stats.load_seconds > 0

    second = await cache.local_path("random-40mb.safetensors", sha, size, key)
    assert second == first
    disk_stats, remote_stats = cache.stats()
    assert (disk_stats.hits, disk_stats.misses, disk_stats.bytes_loaded) == (1, 1, size)
    assert (disk_stats.bytes_used, disk_stats.bytes_capacity) == (size, 100 * 1000 * 1000)
    assert (remote_stats.hits, remote_stats.bytes_loaded) == (1, size)  # not downloaded again
    assert disk.sha256_for("random-40mb.safetensors") == sha

    assert sample("cache_hit_rate", "disk") == pytest.approx(0.5)
    assert sample("cache_hit_rate", "object_store") == pytest.approx(1.0)
    assert sample("model_cache_bytes", "disk") == size
    assert sample("model_load_time_seconds_count", "object_store") - remote_loads == 1
    assert sample("model_load_time_seconds_count", "disk") - disk_loads == 1
    assert leftovers(tmp_path) == []

    # A restarted executor finds the file on disk without going to the object store.
    restarted = ModelFileCache(DiskTier(tmp_path / "disk", 100 * 1000 * 1000), ObjectStoreTier(store, bucket))
    assert await restarted.local_path("random-40mb.safetensors", sha, size, key) == first
    assert [(s.hits, s.misses) for s in restarted.stats()] == [(1, 0), (0, 0)]


async def test_concurrent_requests_download_once(
        tmp_path: Path, store: ObjectStore, bucket: str, model: tuple[str, str, int]) -> None:
    key, sha, size = model
    cache = ModelFileCache(DiskTier(tmp_path / "disk", 100 * 1000 * 1000), ObjectStoreTier(store, bucket))
    paths = await asyncio.gather(*(cache.local_path("m", sha, size, key) for _ in range(3)))
    assert len(set(paths)) == 1
    assert cache.stats()[1].bytes_loaded == size  # one transfer for three callers
    assert leftovers(tmp_path) == []


async def test_wrong_sha256_is_refused_and_leaves_no_file(
        tmp_path: Path, store: ObjectStore, bucket: str, model: tuple[str, str, int]) -> None:
    key, _, size = model
    wrong = hashlib.sha256(b"not the model").hexdigest()
    disk = DiskTier(tmp_path / "disk", 100 * 1000 * 1000)
    cache = ModelFileCache(disk, ObjectStoreTier(store, bucket))
    with pytest.raises(ServiceError) as caught:
        await cache.local_path("m", wrong, size, key)
    assert caught.value.reason == Reason.MODEL_CHECKSUM_MISMATCH
    assert caught.value.metadata["expected_sha256"] == wrong
    assert not disk.file_path(wrong).exists()
    assert leftovers(tmp_path) == []
    assert disk.bytes_used == 0 and disk.bytes_reserved == 0
    assert cache.stats()[1].errors == 1

    # A size that cannot match is refused before any byte is downloaded.
    with pytest.raises(ServiceError) as wrong_size:
        await cache.local_path("m", wrong, size + 1, key)
    assert wrong_size.value.reason == Reason.MODEL_CHECKSUM_MISMATCH
    assert wrong_size.value.metadata["actual_size"] == str(size)


async def test_missing_key_is_resource_not_found(tmp_path: Path, store: ObjectStore, bucket: str) -> None:
    disk = DiskTier(tmp_path / "disk", 1 << 20)
    cache = ModelFileCache(disk, ObjectStoreTier(store, bucket))
    with pytest.raises(ServiceError) as caught:
        await cache.local_path("m", hashlib.sha256(b"x").hexdigest(), 1, "checkpoints/nope.safetensors")
    assert caught.value.reason == Reason.RESOURCE_NOT_FOUND
    assert cache.stats()[1].misses == 1
    assert leftovers(tmp_path) == [] and disk.entries() == []


class DyingStore(ObjectStore):
    """The real store, whose downloads die after a few chunks (a connection reset mid-transfer)."""

    def __init__(self, real: ObjectStore, after_chunks: int) -> None:
        self.__dict__.update(real.__dict__)
        self.after_chunks = after_chunks
        self.chunks_served = 0

    async def iter_chunks(self, bucket: str, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        async for chunk in super().iter_chunks(bucket, key, chunk_size):
            if self.chunks_served == self.after_chunks:
                raise ConnectionResetError("connection reset by peer")
            self.chunks_served += 1
            yield chunk


async def test_killed_download_leaves_no_partial_file(
        tmp_path: Path, store: ObjectStore, bucket: str, model: tuple[str, str, int]) -> None:
    key, sha, size = model
    disk = DiskTier(tmp_path / "disk", 100 * 1000 * 1000)
    dying = DyingStore(store, after_chunks=10)
    with pytest.raises(ConnectionResetError):
        await ModelFileCache(disk, ObjectStoreTier(dying, bucket)).local_path("m", sha, size, key)
    assert dying.chunks_served == 10
    assert not disk.file_path(sha).exists() and leftovers(tmp_path) == []
    assert disk.bytes_used == 0 and disk.bytes_reserved == 0

    # A download cancelled midway (the execution was cancelled) leaves nothing either.
    cache = ModelFileCache(disk, ObjectStoreTier(store, bucket, chunk_size=256 * 1024))
    task = asyncio.create_task(cache.local_path("m", sha, size, key))
    partial = disk.file_path(sha).parent
    for _ in range(2000):
        if partial.exists() and leftovers(partial):
            break
        await asyncio.sleep(0.005)
    assert leftovers(partial), "the download never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # the worker thread writing the last chunk finishes
    assert not disk.file_path(sha).exists() and leftovers(tmp_path) == []
    assert disk.bytes_reserved == 0

    # The next attempt downloads the whole file and verifies it.
    path = await cache.local_path("m", sha, size, key)
    assert file_sha256(path) == sha and leftovers(tmp_path) == []
