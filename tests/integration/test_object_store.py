"""The object store against a real SeaweedFS: buckets, streaming put/get, presigned URLs, typed errors."""

from __future__ import annotations

import hashlib
import os
import uuid

import httpx
import pytest

from service_runtime.errors import Reason, ServiceError
from service_runtime.object_store import PART_SIZE, ObjectStore
from service_runtime.processes import SeaweedFSServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(seaweedfs: SeaweedFSServer) -> ObjectStore:
    store = ObjectStore(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    return store


@pytest.fixture
async def bucket(store: ObjectStore) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    await store.ensure_bucket(name)
    await store.ensure_bucket(name)  # idempotent
    return name


async def test_put_get_stat_delete(store: ObjectStore, bucket: str) -> None:
    info = await store.put_bytes(bucket, "a/b.png", b"\x89PNG data", "image/png")
    assert info.size == 9
    assert await store.get_bytes(bucket, "a/b.png") == b"\x89PNG data"
    stat = await store.stat(bucket, "a/b.png")
    assert (stat.size, stat.content_type) == (9, "image/png")
    assert await store.exists(bucket, "a/b.png")
    await store.delete(bucket, "a/b.png")
    assert not await store.exists(bucket, "a/b.png")


async def test_missing_object_is_typed_not_found(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(ServiceError) as caught:
        await store.get_bytes(bucket, "nope")
    assert caught.value.reason == Reason.RESOURCE_NOT_FOUND


async def test_multipart_stream_of_unknown_length(store: ObjectStore, bucket: str) -> None:
    """More than one part, fed chunk by chunk, read back chunk by chunk: never whole in memory on either side."""
    chunk = os.urandom(1 << 20)
    total = PART_SIZE + 3 * len(chunk)
    digest = hashlib.sha256()
    chunks = []
    for _ in range(total // len(chunk)):
        digest.update(chunk)
        chunks.append(chunk)
    info = await store.put_stream(bucket, "big.bin", iter(chunks))
    assert info.size == total
    read = hashlib.sha256()
    sizes = []
    async for part in store.iter_chunks(bucket, "big.bin"):
        read.update(part)
        sizes.append(len(part))
    assert read.hexdigest() == digest.hexdigest()
    assert max(sizes) <= 1 << 20


async def test_presigned_urls(store: ObjectStore, bucket: str) -> None:
    put_url = await store.presigned_put_url(bucket, "up.txt", 60)
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.put(put_url, content=b"hello")).status_code == 200
        get_url = await store.presigned_get_url(bucket, "up.txt", 60)
        response = await client.get(get_url)
        assert (response.status_code, response.content) == (200, b"hello")
        tampered = get_url.replace("up.txt", "other.txt")
        assert (await client.get(tampered)).status_code == 403


async def test_wrong_credentials_are_refused(seaweedfs: SeaweedFSServer) -> None:
    bad = ObjectStore(seaweedfs.endpoint, seaweedfs.access_key, "wrong-secret")
    with pytest.raises(ServiceError) as caught:
        await bad.ensure_bucket("whatever")
    assert caught.value.code.name == "PERMISSION_DENIED"


async def test_unreachable_endpoint_is_unavailable() -> None:
    from service_runtime.processes import free_port

    store = ObjectStore(f"127.0.0.1:{free_port()}", "a", "b")
    with pytest.raises(ServiceError) as caught:
        await store.ensure_bucket("unreachable-bucket")
    assert caught.value.reason == Reason.BACKEND_UNAVAILABLE
