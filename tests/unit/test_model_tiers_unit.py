"""The disk tier of the model cache: verified atomic admission, size-aware LRU, pins, restart recovery, single
downloads under concurrency; and ModelFileCache's statistics over an in-memory object store."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from gpu_executor.model_tiers import DiskTier, ModelFileCache, ObjectStoreTier
from gpu_executor.model_tiers.disk import INDEX_NAME, TEMP_PREFIX
from service_runtime.errors import Reason, ServiceError, not_found
from service_runtime.object_store import ObjectInfo

pytestmark = pytest.mark.unit


def blob(size: int, seed: int = 0) -> tuple[bytes, str]:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    return data, hashlib.sha256(data).hexdigest()


def chunks_of(data: bytes, chunk: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


def stray_files(root: Path) -> list[Path]:
    """Everything under the root that is not a final file or the index: temp files must never survive."""
    return [p for p in root.rglob("*") if p.is_file() and (p.name.startswith(TEMP_PREFIX))]


class CountingSource:
    """A slow iterable source that counts how many chunks were read from it."""

    def __init__(self, data: bytes, chunk: int = 1000, delay: float = 0.002) -> None:
        self.data, self.chunk, self.delay = data, chunk, delay
        self.reads = 0

    def __iter__(self) -> Iterator[bytes]:
        for part in chunks_of(self.data, self.chunk):
            self.reads += 1
            time.sleep(self.delay)
            yield part


class AsyncCountingSource:
    def __init__(self, data: bytes, chunk: int = 1000, fail_after: int | None = None) -> None:
        self.data, self.chunk, self.fail_after = data, chunk, fail_after
        self.reads = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[bytes]:
        for part in chunks_of(self.data, self.chunk):
            if self.fail_after is not None and self.reads >= self.fail_after:
                raise ConnectionResetError("connection lost mid-download")
            self.reads += 1
            await asyncio.sleep(0.001)
            yield part


def reason_of(excinfo: pytest.ExceptionInfo[ServiceError]) -> Reason:
    return excinfo.value.reason


# -- admission and verification --------------------------------------------------------------------------


def test_admit_stores_content_addressed_and_indexes(tmp_path: Path) -> None:
    data, sha = blob(5000)
    disk = DiskTier(tmp_path, 1 << 20)
    path = disk.admit(sha, chunks_of(data), len(data), name="models/a.safetensors")
    assert path == tmp_path / sha[:2] / sha
    assert path.read_bytes() == data
    assert disk.path_for(sha) == path
    assert disk.path_for(sha.upper()) == path  # digests are case-insensitive
    assert disk.bytes_used == 5000 and disk.bytes_reserved == 0
    assert disk.sha256_for("models/a.safetensors") == sha
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["files"][sha]["size"] == 5000
    assert index["names"] == {"models/a.safetensors": sha}
    assert stray_files(tmp_path) == []


def test_admit_from_path_and_file_object(tmp_path: Path) -> None:
    data, sha = blob(3 << 20, seed=1)  # more than one read chunk
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    disk = DiskTier(tmp_path / "cache", 16 << 20)
    assert disk.admit(sha, source, len(data)).read_bytes() == data
    other, other_sha = blob(777, seed=2)
    assert disk.admit(other_sha, io.BytesIO(other), len(other)).read_bytes() == other
    # Already there: the source is not read at all.
    untouched = CountingSource(data)
    assert disk.admit(sha, untouched, len(data)) == disk.file_path(sha)
    assert untouched.reads == 0


def test_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    data, _ = blob(4000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    disk = DiskTier(tmp_path, 1 << 20)
    with pytest.raises(ServiceError) as caught:
        disk.admit(wrong, chunks_of(data), len(data))
    assert reason_of(caught) == Reason.MODEL_CHECKSUM_MISMATCH
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
    assert caught.value.metadata["actual_sha256"] == hashlib.sha256(data).hexdigest()
    assert disk.path_for(wrong) is None
    assert not disk.file_path(wrong).exists()
    assert stray_files(tmp_path) == []
    assert disk.bytes_used == 0 and disk.bytes_reserved == 0


@pytest.mark.parametrize("declared", [3999, 4001])
def test_wrong_size_is_a_mismatch(tmp_path: Path, declared: int) -> None:
    data, sha = blob(4000)
    disk = DiskTier(tmp_path, 1 << 20)
    with pytest.raises(ServiceError) as caught:
        disk.admit(sha, chunks_of(data), declared)
    assert reason_of(caught) == Reason.MODEL_CHECKSUM_MISMATCH
    assert not disk.file_path(sha).exists() and stray_files(tmp_path) == []
    assert disk.bytes_reserved == 0


def test_source_failing_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    data, sha = blob(10_000)

    def broken() -> Iterator[bytes]:
        yield data[:3000]
        raise ConnectionResetError("peer went away")

    disk = DiskTier(tmp_path, 1 << 20)
    with pytest.raises(ConnectionResetError):
        disk.admit(sha, broken(), len(data))
    assert not disk.file_path(sha).exists() and stray_files(tmp_path) == []
    assert disk.bytes_reserved == 0
    # The next attempt with a good source works.
    assert disk.admit(sha, chunks_of(data), len(data)).read_bytes() == data


def test_invalid_arguments(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 1000)
    with pytest.raises(ServiceError) as caught:
        disk.admit("not-a-digest", [b""], 0)
    assert reason_of(caught) == Reason.INVALID_ARGUMENT
    with pytest.raises(ValueError, match="capacity"):
        DiskTier(tmp_path / "x", 0)


# -- eviction and pins ----------------------------------------------------------------------------------


def test_size_aware_lru_eviction(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 1000)
    files = {n: blob(300, seed=n) for n in range(4)}
    for n in range(3):
        disk.admit(files[n][1], [files[n][0]], 300)
    assert disk.path_for(files[0][1]) is not None  # 0 becomes the most recently used; 1 is now the oldest
    disk.admit(files[3][1], [files[3][0]], 300)
    assert disk.path_for(files[1][1]) is None and not disk.file_path(files[1][1]).exists()
    assert {e.sha256 for e in disk.entries()} == {files[0][1], files[2][1], files[3][1]}
    assert disk.bytes_used == 900
    # A big one evicts as many of the least recently used as it needs: 2 then 0 (3 was admitted last).
    big, big_sha = blob(650, seed=9)
    disk.admit(big_sha, [big], 650)
    assert [e.sha256 for e in disk.entries()] == [files[3][1], big_sha]
    assert disk.bytes_used == 950


def test_pinned_files_are_never_evicted(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 1000)
    a, a_sha = blob(400, seed=1)
    b, b_sha = blob(400, seed=2)
    c, c_sha = blob(400, seed=3)
    disk.admit(a_sha, [a], 400)
    disk.admit(b_sha, [b], 400)
    with disk.pin(a_sha):
        assert disk.is_pinned(a_sha)
        disk.admit(c_sha, [c], 400)  # evicts b (unpinned) although a is older
        assert disk.path_for(a_sha) is not None and disk.path_for(b_sha) is None
        with disk.pin(c_sha):
            with pytest.raises(ServiceError) as caught:  # the rest is pinned: no room, nothing evicted
                disk.admit(b_sha, [b], 400)
            assert reason_of(caught) == Reason.MODEL_IN_USE
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert disk.path_for(a_sha) is not None and disk.path_for(c_sha) is not None
            with pytest.raises(ServiceError) as refused:
                disk.discard(c_sha)
            assert reason_of(refused) == Reason.MODEL_IN_USE
    assert not disk.is_pinned(a_sha)
    disk.admit(b_sha, [b], 400)  # unpinned again: evictable
    assert stray_files(tmp_path) == [] and disk.bytes_reserved == 0


def test_larger_than_capacity_is_refused_before_reading(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 1000)
    data, sha = blob(1001)
    source = CountingSource(data)
    with pytest.raises(ServiceError) as caught:
        disk.admit(sha, source, len(data))
    assert reason_of(caught) == Reason.MODEL_TOO_LARGE
    assert source.reads == 0


def test_pin_before_admission_protects_the_new_file(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 500)
    a, a_sha = blob(300, seed=1)
    b, b_sha = blob(300, seed=2)
    with disk.pin(a_sha):
        disk.admit(a_sha, [a], 300)
        with pytest.raises(ServiceError):
            disk.admit(b_sha, [b], 300)
    disk.admit(b_sha, [b], 300)
    assert disk.path_for(a_sha) is None


# -- restart recovery -----------------------------------------------------------------------------------


def test_restart_keeps_the_cache_and_its_lru_order(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 1000)
    files = [blob(300, seed=n) for n in range(3)]
    for n, (data, sha) in enumerate(files):
        disk.admit(sha, [data], 300, name=f"m{n}")
    disk.path_for(files[0][1])  # order now: 1, 2, 0
    restarted = DiskTier(tmp_path, 1000)
    assert [e.sha256 for e in restarted.entries()] == [files[1][1], files[2][1], files[0][1]]
    assert restarted.bytes_used == 900
    assert restarted.sha256_for("m2") == files[2][1]
    # LRU carried over: the next admission evicts 1.
    new, new_sha = blob(300, seed=7)
    restarted.admit(new_sha, [new], 300)
    assert restarted.path_for(files[1][1]) is None


def test_restart_drops_missing_and_wrong_size_files_and_temp_leftovers(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 10_000)
    (a, a_sha), (b, b_sha), (c, c_sha) = (blob(500, seed=n) for n in range(3))
    for data, sha in ((a, a_sha), (b, b_sha), (c, c_sha)):
        disk.admit(sha, [data], len(data), name=sha[:8])
    disk.file_path(a_sha).unlink()  # gone
    disk.file_path(b_sha).write_bytes(b[:100])  # truncated
    leftover = disk.file_path(c_sha).parent / f"{TEMP_PREFIX}{c_sha}-deadbeef"
    leftover.write_bytes(b"half a download")
    index_leftover = tmp_path / f"{TEMP_PREFIX}{INDEX_NAME}-cafe"
    index_leftover.write_text("{")

    restarted = DiskTier(tmp_path, 10_000)
    assert [e.sha256 for e in restarted.entries()] == [c_sha]
    assert restarted.bytes_used == 500
    assert not disk.file_path(b_sha).exists()  # a wrong-size file is deleted, not trusted
    assert not leftover.exists() and not index_leftover.exists()
    assert restarted.sha256_for(a_sha[:8]) is None and restarted.sha256_for(c_sha[:8]) == c_sha
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert set(index["files"]) == {c_sha}


def test_restart_adopts_files_the_index_missed_and_survives_a_corrupt_index(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 10_000)
    (a, a_sha), (b, b_sha) = blob(400, seed=1), blob(600, seed=2)
    disk.admit(a_sha, [a], 400)
    disk.admit(b_sha, [b], 600)
    (tmp_path / INDEX_NAME).write_text("{not json")
    restarted = DiskTier(tmp_path, 10_000)
    assert {e.sha256 for e in restarted.entries()} == {a_sha, b_sha}
    assert restarted.bytes_used == 1000
    assert json.loads((tmp_path / INDEX_NAME).read_text())["version"] == 1


def test_restart_with_a_smaller_budget_evicts(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 1000)
    files = [blob(300, seed=n) for n in range(3)]
    for data, sha in files:
        disk.admit(sha, [data], 300)
    smaller = DiskTier(tmp_path, 650)
    assert [e.sha256 for e in smaller.entries()] == [files[1][1], files[2][1]]
    assert not smaller.file_path(files[0][1]).exists()


def test_a_file_removed_behind_the_tiers_back_is_a_miss(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 10_000)
    data, sha = blob(100)
    disk.admit(sha, [data], 100)
    disk.file_path(sha).unlink()
    assert disk.path_for(sha) is None
    assert disk.bytes_used == 0


# -- concurrency ----------------------------------------------------------------------------------------


def test_concurrent_threads_admitting_one_sha256_read_one_source(tmp_path: Path) -> None:
    data, sha = blob(50_000)
    disk = DiskTier(tmp_path, 1 << 20)
    sources = [CountingSource(data) for _ in range(4)]
    barrier = threading.Barrier(len(sources))
    paths: list[Path] = []

    def worker(source: CountingSource) -> None:
        barrier.wait()
        paths.append(disk.admit(sha, source, len(data)))

    threads = [threading.Thread(target=worker, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert paths == [disk.file_path(sha)] * 4
    assert sum(s.reads for s in sources) == 50  # one source read in full, the others not at all
    assert sorted(s.reads for s in sources) == [0, 0, 0, 50]
    assert disk.bytes_used == len(data) and disk.bytes_reserved == 0


def test_concurrent_threads_admitting_different_files(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, 1 << 20)
    files = [blob(20_000, seed=n) for n in range(6)]
    threads = [threading.Thread(target=disk.admit, args=(sha, CountingSource(data), len(data)))
               for data, sha in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {e.sha256 for e in disk.entries()} == {sha for _, sha in files}
    assert disk.bytes_used == 120_000 and stray_files(tmp_path) == []


async def test_concurrent_tasks_admitting_one_sha256_download_once(tmp_path: Path) -> None:
    data, sha = blob(30_000)
    disk = DiskTier(tmp_path, 1 << 20)
    sources = [AsyncCountingSource(data) for _ in range(3)]
    paths = await asyncio.gather(*(disk.admit_async(sha, s, len(data)) for s in sources))
    assert set(paths) == {disk.file_path(sha)}
    assert sorted(s.reads for s in sources) == [0, 0, 30]
    assert disk.file_path(sha).read_bytes() == data


async def test_leaders_checksum_error_reaches_the_waiters(tmp_path: Path) -> None:
    data, _ = blob(10_000)
    wrong = hashlib.sha256(b"x").hexdigest()
    disk = DiskTier(tmp_path, 1 << 20)
    sources = [AsyncCountingSource(data) for _ in range(3)]
    results = await asyncio.gather(*(disk.admit_async(wrong, s, len(data)) for s in sources),
                                   return_exceptions=True)
    assert all(isinstance(r, ServiceError) and r.reason == Reason.MODEL_CHECKSUM_MISMATCH for r in results)
    assert sum(s.reads for s in sources) == 10  # downloaded once, refused once
    assert stray_files(tmp_path) == [] and disk.bytes_reserved == 0


async def test_cancelled_leader_leaves_nothing_and_a_waiter_takes_over(tmp_path: Path) -> None:
    data, sha = blob(100_000)
    disk = DiskTier(tmp_path, 1 << 20)
    first, second = AsyncCountingSource(data), AsyncCountingSource(data)
    leader = asyncio.create_task(disk.admit_async(sha, first, len(data)))
    while first.reads < 5:
        await asyncio.sleep(0.001)
    waiter = asyncio.create_task(disk.admit_async(sha, second, len(data)))
    await asyncio.sleep(0.01)
    assert second.reads == 0  # waiting for the leader, not downloading
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await waiter == disk.file_path(sha)
    assert second.reads == 100
    assert disk.file_path(sha).read_bytes() == data
    assert stray_files(tmp_path) == [] and disk.bytes_reserved == 0


async def test_async_source_failing_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    data, sha = blob(20_000)
    disk = DiskTier(tmp_path, 1 << 20)
    with pytest.raises(ConnectionResetError):
        await disk.admit_async(sha, AsyncCountingSource(data, fail_after=7), len(data))
    assert not disk.file_path(sha).exists() and stray_files(tmp_path) == []
    assert disk.bytes_reserved == 0 and disk.bytes_used == 0


async def test_admit_async_with_a_sync_source(tmp_path: Path) -> None:
    data, sha = blob(5000)
    disk = DiskTier(tmp_path, 1 << 20)
    assert (await disk.admit_async(sha, chunks_of(data), len(data))).read_bytes() == data


# -- ModelFileCache over an in-memory store ------------------------------------------------------------


class MemoryStore:
    """The two ObjectStore calls the object tier uses, over a dict."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets = 0

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        if key not in self.objects:
            raise not_found(f"object not found: {bucket}/{key}", bucket=bucket, key=key)
        return ObjectInfo(bucket, key, len(self.objects[key]), "", "application/octet-stream")

    async def iter_chunks(self, bucket: str, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        self.gets += 1
        data = self.objects[key]
        for i in range(0, len(data), chunk_size):
            await asyncio.sleep(0)
            yield data[i:i + chunk_size]


def sample(name: str, tier: str) -> float:
    return REGISTRY.get_sample_value(name, {"tier": tier}) or 0.0


async def test_model_file_cache_stats_and_metrics(tmp_path: Path) -> None:
    data, sha = blob(70_000)
    store = MemoryStore({"models/m.safetensors": data})
    cache = ModelFileCache(DiskTier(tmp_path, 1 << 20), ObjectStoreTier(store, "b", chunk_size=8192))  # type: ignore[arg-type]
    loads_before = sample("model_load_time_seconds_count", "object_store")

    paths = await asyncio.gather(*(cache.local_path("m", sha, len(data), "models/m.safetensors") for _ in range(3)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert store.gets == 1  # three concurrent misses, one download
    assert await cache.local_path("m", sha, len(data), "models/m.safetensors") == paths[0]

    disk, remote = cache.stats()
    assert (disk.tier, disk.hits, disk.misses, disk.bytes_used, disk.bytes_capacity) == ("disk", 1, 3, 70_000,
                                                                                        1 << 20)
    assert disk.bytes_loaded == 70_000
    assert (remote.tier, remote.hits, remote.misses, remote.bytes_loaded) == ("object_store", 3, 0, 70_000)
    assert remote.load_seconds > 0
    assert disk.hit_rate == pytest.approx(0.25)
    assert sample("cache_hit_rate", "disk") == pytest.approx(0.25)
    assert sample("model_cache_bytes", "disk") == 70_000
    assert sample("model_load_time_seconds_count", "object_store") - loads_before == 3

    with pytest.raises(ServiceError) as caught:
        await cache.local_path("gone", hashlib.sha256(b"gone").hexdigest(), 4, "models/gone")
    assert reason_of(caught) == Reason.RESOURCE_NOT_FOUND
    assert cache.stats()[1].misses == 1

    async with cache.pinned_path("m", sha, len(data), "models/m.safetensors") as pinned:
        assert cache.disk.is_pinned(sha) and pinned == paths[0]
    assert not cache.disk.is_pinned(sha)

