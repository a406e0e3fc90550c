"""Input and output files through WorkflowService, on a real gRPC server, SeaweedFS and PostgreSQL: UploadInput
(tenant-scoped content-addressed keys the executor reads), DownloadOutput (streamed chunks) and presigned URLs."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from gpu_executor.io.inputs import InputSpec, materialize_inputs
from service_runtime.db import Database, migrate
from service_runtime.grpc import GrpcServer, ServiceBinding
from service_runtime.grpc.identity import DEFAULT_TENANT
from service_runtime.ids import time_ordered_id
from service_runtime.object_store import CHUNK_SIZE, ObjectStore
from service_runtime.pagination import PageTokenCodec
from service_runtime.processes import SeaweedFSServer
from service_runtime.settings import Settings
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.repository import ExecutionRepository
from services.workflow.catalog import ExecutorCatalog
from services.workflow.files import input_key_belongs_to
from services.workflow.queries import ExecutionQueries
from services.workflow.transport import WorkflowServicer

pytestmark = pytest.mark.integration
INLINE_LIMIT = 256 << 10
TTL = 600
if TYPE_CHECKING:
    Stub = workflow_service_pb2_grpc.WorkflowServiceAsyncStub


class Mesh:
    """A workflow server in this process, with what the tests inspect behind it."""

    def __init__(self, settings: Settings, store: ObjectStore | None, db: Database, server: GrpcServer,
                 channel: grpc.aio.Channel) -> None:
        self.settings, self.store, self.db, self.server, self.channel = settings, store, db, server, channel
        self.stub: Stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        self.repository = ExecutionRepository(db)

    @property
    def inputs_bucket(self) -> str:
        return f"{self.settings.s3_bucket_prefix}-inputs"

    @property
    def outputs_bucket(self) -> str:
        return f"{self.settings.s3_bucket_prefix}-outputs"


async def _mesh(postgres_url: str, store: ObjectStore | None) -> Mesh:
    await migrate.upgrade_async(postgres_url)
    settings = Settings(s3_bucket_prefix=f"wf{secrets.token_hex(4)}", max_inline_input_bytes=INLINE_LIMIT,
                        presigned_url_ttl_seconds=TTL, metrics_port=0, shutdown_grace_seconds=0.5)
    db = Database(postgres_url)
    queries = ExecutionQueries(ExecutionRepository(db), PageTokenCodec(b"test-secret"))
    catalog = ExecutorCatalog(lambda: cast(Any, None))  # the file RPCs never read the node catalog
    servicer = WorkflowServicer(queries, catalog, store=store, settings=settings)  # type: ignore[abstract]
    server = GrpcServer(settings, "workflow-test", [ServiceBinding(
        "comfymesh.workflow.v1.WorkflowService", servicer,
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server)], port=0, host="127.0.0.1")
    await server.start()
    return Mesh(settings, store, db, server, grpc.aio.insecure_channel(server.address))


async def _close(mesh: Mesh) -> None:
    await mesh.channel.close()
    await mesh.server.stop(0.1)
    await mesh.db.dispose()


@pytest.fixture
async def mesh(postgres_url: str, seaweedfs: SeaweedFSServer) -> AsyncIterator[Mesh]:
    store = ObjectStore(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    mesh = await _mesh(postgres_url, store)
    try:
        yield mesh
    finally:
        await _close(mesh)


@pytest.fixture
async def storeless(postgres_url: str) -> AsyncIterator[Mesh]:
    mesh = await _mesh(postgres_url, None)
    try:
        yield mesh
    finally:
        await _close(mesh)


def _status(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    status = rpc_status.from_call(cast(Any, error))
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    violations = [(v.field, v.reason) for v in bad.field_violations] \
        if len(status.details) > 1 and status.details[1].Unpack(bad) else []
    return error.code(), info.reason, violations


# -- UploadInput -------------------------------------------------------------------------------------------------


async def test_upload_stores_a_tenant_scoped_content_addressed_object(mesh: Mesh, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    digest = hashlib.sha256(data).hexdigest()
    response = await mesh.stub.UploadInput(workflow_service_pb2.UploadInputRequest(
        filename="photos/./cat.png", content_type="image/png", data=data))
    assert (response.object_key, response.sha256, response.size_bytes) == (
        f"{DEFAULT_TENANT}/{digest}/photos/cat.png", digest, len(data))
    assert input_key_belongs_to(DEFAULT_TENANT, response.object_key)
    assert not input_key_belongs_to("someone-else", response.object_key)
    assert mesh.store is not None
    stat = await mesh.store.stat(mesh.inputs_bucket, response.object_key)
    assert (stat.size, stat.content_type) == (len(data), "image/png")
    assert await mesh.store.get_bytes(mesh.inputs_bucket, response.object_key) == data

    again = await mesh.stub.UploadInput(workflow_service_pb2.UploadInputRequest(filename="photos/cat.png", data=data))
    assert again.object_key == response.object_key  # same bytes, same name: the same object

    # The executor fetches it by that key from the same bucket, and the sha256 it is given checks out.
    written = await materialize_inputs(
        [InputSpec("cat.png", object_key=response.object_key, sha256=response.sha256)], tmp_path / "input",
        store=mesh.store, inputs_bucket=mesh.inputs_bucket, max_inline_bytes=INLINE_LIMIT, max_url_bytes=1,
        url_timeout=5, allow_private_urls=False)
    assert written["cat.png"].read_bytes() == data


async def test_upload_guesses_the_content_type(mesh: Mesh) -> None:
    response = await mesh.stub.UploadInput(workflow_service_pb2.UploadInputRequest(filename="a.jpg", data=b"jpeg"))
    assert mesh.store is not None
    assert (await mesh.store.stat(mesh.inputs_bucket, response.object_key)).content_type == "image/jpeg"


@pytest.mark.parametrize(("filename", "data", "content_type", "violation"), [
    ("a.png", b"", "", ("data", "DATA_EMPTY")),
    ("a.png", b"x" * (INLINE_LIMIT + 1), "", ("data", "DATA_TOO_LARGE")),
    ("", b"x", "", ("filename", "NAME_EMPTY")),
    ("../../etc/passwd", b"x", "", ("filename", "NAME_ESCAPES")),
    ("a/../../b.png", b"x", "", ("filename", "NAME_ESCAPES")),
    ("/abs.png", b"x", "", ("filename", "NAME_ABSOLUTE")),
    ("a\nb.png", b"x", "", ("filename", "NAME_CHARACTERS")),
    ("a\x00b.png", b"x", "", ("filename", "NAME_CHARACTERS")),
    ("dir\\a.png", b"x", "", ("filename", "NAME_CHARACTERS")),
    ("x" * 300, b"x", "", ("filename", "NAME_TOO_LONG")),
    ("a.png", b"x", "not a media type", ("content_type", "CONTENT_TYPE_INVALID")),
])
async def test_upload_refuses_bad_input(mesh: Mesh, filename: str, data: bytes, content_type: str,
                                        violation: tuple[str, str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.stub.UploadInput(workflow_service_pb2.UploadInputRequest(
            filename=filename, data=data, content_type=content_type))
    assert _status(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INPUT_INVALID", [violation])


@pytest.mark.parametrize(("tenant", "key", "belongs"), [
    ("default", f"default/{'a' * 64}/x.png", True),
    ("default", f"default/{'a' * 64}/sub/x.png", True),
    ("default", f"other/{'a' * 64}/x.png", False),
    ("default", f"defaultx/{'a' * 64}/x.png", False),
    ("default", f"default/{'a' * 64}/../../other/{'a' * 64}/x.png", False),
    ("default", f"default//{'a' * 64}/x.png", False),
    ("default", "default/not-a-digest/x.png", False),
    ("default", f"default/{'a' * 64}", False),
    ("", f"/{'a' * 64}/x.png", False),
])
def test_input_key_belongs_to(tenant: str, key: str, belongs: bool) -> None:
    assert input_key_belongs_to(tenant, key) is belongs


# -- DownloadOutput and presigned URLs ---------------------------------------------------------------------------


async def _execution(mesh: Mesh, *, tenant: str = DEFAULT_TENANT, state: ExecutionState = ExecutionState.SUCCEEDED,
                     files: dict[str, tuple[bytes, str]] | None = None, camel_case: bool = False) -> ExecutionRecord:
    """An execution record with outputs (name → (bytes, content type)) whose objects are in the outputs bucket,
    keyed the way executors key them."""
    execution_id = time_ordered_id()
    outputs = []
    assert mesh.store is not None
    await mesh.store.ensure_bucket(mesh.outputs_bucket)
    for name, (data, content_type) in (files or {}).items():
        subfolder, _, filename = name.rpartition("/")
        key = "/".join(p for p in (execution_id, "1", "output", subfolder, filename) if p)
        await mesh.store.put_bytes(mesh.outputs_bucket, key, data, content_type)
        output = {"node_id": "9", "filename": filename, "subfolder": subfolder, "type": "output",
                  "content_type": content_type, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                  "object_key": key}
        if camel_case:
            output = {"nodeId": "9", "filename": filename, "subfolder": subfolder, "type": "output",
                      "contentType": content_type, "sizeBytes": str(len(data)), "objectKey": key}
        outputs.append(output)
    now = datetime.now(UTC)
    record = ExecutionRecord(id=execution_id, tenant=tenant, state=state, create_time=now, update_time=now,
                             graph={"9": {"class_type": "SaveImage", "inputs": {}}}, outputs=outputs)
    await mesh.repository.add(record)
    return record


async def _download(stub: Stub, execution_id: str, filename: str) -> list[Any]:
    call = stub.DownloadOutput(workflow_service_pb2.DownloadOutputRequest(id=execution_id, filename=filename))
    return [message async for message in call]


async def test_download_streams_the_output_in_chunks(mesh: Mesh) -> None:
    big = os.urandom(2 * CHUNK_SIZE + 12345)
    record = await _execution(mesh, files={"cat_00001_.png": (b"\x89PNG small", "image/png"),
                                           "runs/day 1/big.bin": (big, "application/octet-stream")})
    messages = await _download(mesh.stub, record.id, "cat_00001_.png")
    assert [(m.content_type, m.data) for m in messages] == [("image/png", b"\x89PNG small")]

    messages = await _download(mesh.stub, record.id, "runs/day 1/big.bin")
    assert messages[0].content_type == "application/octet-stream"
    assert all(not m.content_type for m in messages[1:])
    assert len(messages) >= 3 and max(len(m.data) for m in messages) <= CHUNK_SIZE
    assert b"".join(m.data for m in messages) == big


async def test_download_of_camel_case_outputs_and_empty_files(mesh: Mesh) -> None:
    record = await _execution(mesh, files={"sub/empty.txt": (b"", "text/plain")}, camel_case=True)
    messages = await _download(mesh.stub, record.id, "sub/empty.txt")
    assert [(m.content_type, m.data) for m in messages] == [("text/plain", b"")]


async def test_download_errors(mesh: Mesh) -> None:
    record = await _execution(mesh, files={"a.png": (b"png", "image/png")})
    others = await _execution(mesh, tenant="someone-else", files={"a.png": (b"png", "image/png")})
    running = await _execution(mesh, state=ExecutionState.RUNNING)
    cases = [
        (time_ordered_id(), "a.png", grpc.StatusCode.NOT_FOUND, "EXECUTION_NOT_FOUND"),
        (others.id, "a.png", grpc.StatusCode.NOT_FOUND, "EXECUTION_NOT_FOUND"),
        (record.id, "b.png", grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND"),
        (record.id, "sub/a.png", grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND"),
        (running.id, "a.png", grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND"),
        ("not-an-id", "a.png", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (record.id, "", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ]
    for execution_id, filename, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _download(mesh.stub, execution_id, filename)
        assert _status(caught.value)[:2] == (code, reason), (execution_id, filename)

    assert mesh.store is not None
    await mesh.store.delete(mesh.outputs_bucket, record.outputs[0]["object_key"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _download(mesh.stub, record.id, "a.png")
    assert _status(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_get_execution_has_presigned_output_urls(mesh: Mesh) -> None:
    files = {"a.png": (b"first image", "image/png"), "sub/b.png": (b"second image", "image/png")}
    record = await _execution(mesh, files=files)
    before = datetime.now(UTC)
    execution = await mesh.stub.GetExecution(workflow_service_pb2.GetExecutionRequest(id=record.id))
    assert [o.object_key for o in execution.outputs] == [o["object_key"] for o in record.outputs]
    async with httpx.AsyncClient(trust_env=False) as http:
        for output, (data, _) in zip(execution.outputs, files.values(), strict=True):
            assert output.url.startswith("http") and output.object_key in output.url
            expires = output.url_expire_time.ToDatetime(tzinfo=UTC)
            assert before + timedelta(seconds=TTL - 5) <= expires <= datetime.now(UTC) + timedelta(seconds=TTL + 5)
            response = await http.get(output.url)
            assert (response.status_code, response.content) == (200, data)
    listed = await mesh.stub.ListExecutions(workflow_service_pb2.ListExecutionsRequest())
    assert all(not o.url for e in listed.executions for o in e.outputs)  # listings are not signed


# -- without an object store ---------------------------------------------------------------------------------------


async def test_without_an_object_store(storeless: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storeless.stub.UploadInput(workflow_service_pb2.UploadInputRequest(filename="a.png", data=b"x"))
    assert _status(caught.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")
    now = datetime.now(UTC)
    record = ExecutionRecord(id=time_ordered_id(), tenant=DEFAULT_TENANT, state=ExecutionState.SUCCEEDED,
                             graph={"9": {"class_type": "SaveImage", "inputs": {}}}, create_time=now, update_time=now,
                             outputs=[{"filename": "a.png", "object_key": "k/a.png", "type": "output"}])
    await storeless.repository.add(record)
    execution = await storeless.stub.GetExecution(workflow_service_pb2.GetExecutionRequest(id=record.id))
    assert [(o.filename, o.url) for o in execution.outputs] == [("a.png", "")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _download(storeless.stub, record.id, "a.png")
    assert _status(caught.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")
