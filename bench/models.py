"""Model upload and download throughput through ModelService against raw S3 on the same object store, same file.

    .venv/bin/python -m bench.models [--size-mb 1024] [--runs 1] [--chunk-mb 1] [--postgres]

It starts its own SeaweedFS and ModelService as its own process (`python -m services.model`; SQLite by default,
PostgreSQL with --postgres from COMFYMESH_BENCH_DATABASE_URL or a fresh database on the local server), writes a
valid safetensors file of --size-mb (random data, F16 tensors) to a temporary directory, and, as the client, prints
(medians over --runs):

- raw S3 put   — minio `fput_object` of the file (16 MiB multipart parts, minio's 3 upload threads),
- upload       — UploadModel, the gRPC client stream in --chunk-mb chunks: validation, sha256 and the multipart
                 put into the models bucket all while streaming, then the sidecar and the row,
- presigned    — CreateModelUpload, the client's PUT(s) straight to the object store, then CompleteModelUpload, which
                 re-streams the staging object through validation into the model's key (so it moves the bytes twice),
- raw S3 get   — minio `get_object` of the raw copy, read to the end,
- download     — GetModelDownloadUrl, then an HTTP GET of the presigned URL, read to the end,

each in MB/s (10^6 bytes) with its ratio to the raw figure of the same direction. Every figure is measured in this
run on this machine; the file's page cache is warmed first so every path reads it from memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc.aio
import httpx
import urllib3

from comfymesh.model.v1 import model_service_pb2 as pb
from comfymesh.model.v1 import model_service_pb2_grpc
from service_runtime.auth.client import internal_client_interceptors
from service_runtime.db import migrate
from service_runtime.healthcheck import check
from service_runtime.object_store import PART_SIZE, ObjectStore
from service_runtime.processes import ManagedProcess, SeaweedFSServer, free_port
from service_runtime.settings import Settings
from services.model.testing import blob_layout, write_safetensors

MB = 1e6
ROOT = Path(__file__).resolve().parents[1]
# The deployment secret the bench gives its ModelService process (so it knows the internal credential).
BENCH_SECRET = secrets.token_urlsafe(32)
READ_BLOCK = 4 << 20


def mbps(size: int, seconds: float) -> float:
    return size / MB / seconds


_pool = urllib3.PoolManager()


def _drain(response: Any) -> int:
    total = 0
    try:
        while block := response.read(READ_BLOCK):
            total += len(block)
    finally:
        response.close()
        response.release_conn()
    return total


async def _file_chunks(path: Path, chunk: int) -> AsyncIterator[pb.UploadModelRequest]:
    with path.open("rb") as f:
        while block := f.read(chunk):
            yield pb.UploadModelRequest(chunk=block)


async def run_once(path: Path, size: int, stub: Any, store: ObjectStore, bucket: str,
                   chunk: int) -> dict[str, float]:
    client = store._client  # the same minio client (and pool) the service's store uses
    figures: dict[str, float] = {}
    raw_key = f"bench/raw-{secrets.token_hex(4)}.safetensors"

    started = time.perf_counter()
    await asyncio.to_thread(client.fput_object, bucket, raw_key, str(path), part_size=PART_SIZE)
    figures["raw S3 put"] = mbps(size, time.perf_counter() - started)

    async def requests() -> AsyncIterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(metadata=pb.UploadModelMetadata(
            name=f"bench/{secrets.token_hex(4)}.safetensors", kind=pb.MODEL_KIND_CHECKPOINT, size_bytes=size))
        async for message in _file_chunks(path, chunk):
            yield message

    started = time.perf_counter()
    model = await stub.UploadModel(requests(), timeout=3600)
    figures["upload (gRPC stream)"] = mbps(size, time.perf_counter() - started)

    # The same bytes are deduplicated: the stream upload's model goes before the presigned one stores them again.
    await stub.DeleteModel(pb.DeleteModelRequest(model_id=model.model_id))
    started = time.perf_counter()
    upload = await stub.CreateModelUpload(pb.CreateModelUploadRequest(metadata=pb.UploadModelMetadata(
        name=f"bench/{secrets.token_hex(4)}.safetensors", kind=pb.MODEL_KIND_CHECKPOINT, size_bytes=size)))
    parts = [(0, size, upload.upload_url)] if upload.upload_url else [
        (p.offset, p.size_bytes, p.upload_url) for p in upload.parts]
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), trust_env=False) as http:
        async def put(offset: int, length: int, url: str) -> None:
            async def body() -> AsyncIterator[bytes]:
                with path.open("rb") as f:
                    f.seek(offset)
                    left = length
                    while left:
                        block = f.read(min(READ_BLOCK, left))
                        left -= len(block)
                        yield block

            response = await http.put(url, content=body(), headers={"Content-Length": str(length)})
            response.raise_for_status()

        await asyncio.gather(*(put(*part) for part in parts))
        put_done = time.perf_counter()
        presigned = await stub.CompleteModelUpload(pb.CompleteModelUploadRequest(upload_id=upload.upload_id),
                                                   timeout=3600)
        finished = time.perf_counter()
        figures["presigned (create+PUT+complete)"] = mbps(size, finished - started)
        figures["  of which PUT"] = mbps(size, put_done - started)
        figures["  of which complete"] = mbps(size, finished - put_done)

        started = time.perf_counter()

        assert await asyncio.to_thread(_drain, client.get_object(bucket, raw_key)) == size
        figures["raw S3 get"] = mbps(size, time.perf_counter() - started)

        # The presigned URL is read with the same HTTP library (urllib3) and in the same way as minio's get.
        started = time.perf_counter()
        link = await stub.GetModelDownloadUrl(pb.GetModelDownloadUrlRequest(model_id=presigned.model_id))
        response = await asyncio.to_thread(_pool.request, "GET", link.url, preload_content=False)
        assert response.status == 200
        assert await asyncio.to_thread(_drain, response) == size
        figures["download (presigned URL)"] = mbps(size, time.perf_counter() - started)
    await stub.DeleteModel(pb.DeleteModelRequest(model_id=presigned.model_id))
    await store.delete(bucket, raw_key)
    return figures


async def bench(args: argparse.Namespace, home: Path) -> None:
    seaweed = SeaweedFSServer(home / "seaweedfs", "bench", secrets.token_urlsafe(16), log_path=home / "seaweedfs.log")
    seaweed.start()
    service: ManagedProcess | None = None
    try:
        database_url = f"sqlite+aiosqlite:///{home / 'bench.db'}"
        if args.postgres:
            from bench.control_plane import fresh_postgres

            database_url = os.environ.get("COMFYMESH_BENCH_DATABASE_URL") or fresh_postgres()
        await migrate.upgrade_async(database_url)
        settings = Settings(home=home, s3_endpoint=seaweed.endpoint, s3_access_key=seaweed.access_key,
                            s3_secret_key=seaweed.secret_key, s3_bucket_prefix="bench")
        store = ObjectStore.from_settings(settings)
        bucket = f"{settings.s3_bucket_prefix}-models"
        await store.ensure_bucket(bucket)
        # ModelService as it is deployed: its own process (`python -m services.model`), the bench its client.
        port = free_port()
        env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_DATABASE_URL": database_url,
               "COMFYMESH_S3_ENDPOINT": seaweed.endpoint, "COMFYMESH_S3_ACCESS_KEY": seaweed.access_key,
               "COMFYMESH_S3_SECRET_KEY": seaweed.secret_key, "COMFYMESH_S3_BUCKET_PREFIX": "bench",
               "COMFYMESH_MODEL_PORT": str(port), "COMFYMESH_METRICS_PORT": "0", "COMFYMESH_LOG_LEVEL": "WARNING",
               "COMFYMESH_EXECUTION_ADDR": f"127.0.0.1:{free_port()}", "COMFYMESH_SECRET_KEY": BENCH_SECRET}
        service = ManagedProcess([sys.executable, "-m", "services.model"], log_path=home / "model.log", env=env,
                                 cwd=ROOT, name="model").start()
        address = f"127.0.0.1:{port}"
        service.wait_ready(lambda: check(address, "comfymesh.model.v1.ModelService", timeout=1.0), 60)
        path = home / "bench.safetensors"
        write_safetensors(path, blob_layout(args.size_mb * 1_000_000), fill="random", metadata={"bench": "models"})
        file_size = path.stat().st_size
        with path.open("rb") as f:
            while f.read(READ_BLOCK):  # warm the page cache: every path reads the file from memory
                pass
        print(f"file: {file_size / MB:.1f} MB safetensors; SeaweedFS {seaweed.endpoint}; ModelService process "
              f"{address}; database {'PostgreSQL' if args.postgres else 'SQLite'}; gRPC chunks {args.chunk_mb} MiB; "
              f"presigned part size {settings.model_upload_part_bytes >> 20} MiB; {os.cpu_count()} CPUs")
        # The platform's internal credential (shared deployment secret), acting for the default tenant.
        channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
            interceptors=internal_client_interceptors(Settings(secret_key=BENCH_SECRET)))
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        runs: list[dict[str, float]] = []
        try:
            for _ in range(args.runs):
                runs.append(await run_once(path, file_size, stub, store, bucket, args.chunk_mb << 20))
        finally:
            await channel.close()
        medians = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        raw = {"put": medians["raw S3 put"], "get": medians["raw S3 get"]}
        print(f"{'path':36} {'MB/s':>9} {'vs raw':>8}   (median of {len(runs)} run(s))")
        for name, value in medians.items():
            direction = "get" if name in ("raw S3 get", "download (presigned URL)") else "put"
            ratio = "" if name.startswith("raw") or name.startswith("  ") else f"{value / raw[direction]:7.2f}x"
            print(f"{name:36} {value:9.1f} {ratio:>8}")
    finally:
        if service is not None:
            service.stop(grace=10)
        seaweed.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1000, help="file size in MB (10^6 bytes); default 1000")
    parser.add_argument("--runs", type=int, default=1, help="repetitions (medians are printed)")
    parser.add_argument("--chunk-mb", type=int, default=1, help="gRPC upload chunk size in MiB")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
