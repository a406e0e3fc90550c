"""ModelService on a real gRPC server, SeaweedFS and PostgreSQL: uploads of real (generated, tiny) safetensors of
each kind and architecture read back with their detected metadata; pickles, headers pointing outside the file,
truncated uploads and oversized headers refused with typed reasons and nothing stored; deduplication; presigned
single and multipart (resumable) uploads; imports from the bucket and from URLs; listing, deletion (MODEL_IN_USE),
download URLs, availability from executor heartbeats, tenant isolation; and the object layout the executors read
(gpu_executor.model_tiers.bucket) verified with the executor's own bucket reader."""

from __future__ import annotations

import asyncio
import hashlib
import io
import pickle
import secrets
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from comfymesh.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from comfymesh.executor.v1 import executor_service_pb2
from comfymesh.model.v1 import model_service_pb2 as pb
from comfymesh.model.v1 import model_service_pb2_grpc
from gpu_executor.model_tiers.bucket import ModelBucket
from service_runtime.db import Database, migrate
from service_runtime.errors import Reason, ServiceError
from service_runtime.grpc import GrpcServer, ServiceBinding
from service_runtime.ids import time_ordered_id
from service_runtime.object_store import ObjectStore
from service_runtime.pagination import PageTokenCodec
from service_runtime.processes import SeaweedFSServer
from service_runtime.settings import Settings
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.repository import ExecutionRepository
from services.model import transport
from services.model.client import ModelCatalog
from services.model.domain import ModelFilter, ModelKind, UploadSpec
from services.model.fleet import FleetLocations
from services.model.repository import ModelRepository
from services.model.safetensors_header import Limits
from services.model.service import ModelConfig, ModelService
from services.model.storage import ModelStorage
from services.model.testing import safetensors_bytes

torch = pytest.importorskip("torch")

from gpu_executor.diffusion.models import testing as executor_models  # noqa: E402
from gpu_executor.diffusion.models.ldm_layout import VaeSide, controlnet_layout, prefixed, unet_layout, vae_layout  # noqa: E402

pytestmark = pytest.mark.integration
MAX_BYTES = 512 << 20
PART_BYTES = 5 << 20  # S3's smallest multipart part
TENANT_HEADER = "x-test-tenant"
if TYPE_CHECKING:
    Stub = model_service_pb2_grpc.ModelServiceAsyncStub


# -- the fleet the availability comes from ----------------------------------------------------------------------


class FakeFleet(execution_service_pb2_grpc.ExecutionServiceServicer):
    """ListExecutors as the execution service answers it, from what the test says executors reported."""

    def __init__(self) -> None:
        self.executors: list[execution_service_pb2.Executor] = []

    async def ListExecutors(self, request: Any, context: Any) -> execution_service_pb2.ListExecutorsResponse:
        return execution_service_pb2.ListExecutorsResponse(executors=self.executors)


class Mesh:
    def __init__(self, service: ModelService, stub: Stub, store: ObjectStore, db: Database, fleet: FakeFleet,
                 settings: Settings, seaweedfs: SeaweedFSServer) -> None:
        self.service, self.stub, self.store, self.db, self.fleet = service, stub, store, db, fleet
        self.settings, self.seaweedfs = settings, seaweedfs
        self.bucket = service.storage.bucket
        self.address = ""

    async def keys(self) -> set[str]:
        client = self.seaweedfs.client()
        return {o.object_name or "" for o in await asyncio.to_thread(
            lambda: list(client.list_objects(self.bucket, recursive=True)))}


def _tenant_of(context: Any) -> str:
    return str(dict(context.invocation_metadata()).get(TENANT_HEADER, "default"))


@pytest.fixture(scope="module")
def models_database(postgres_databases: Any) -> str:
    url: str = postgres_databases.create()  # a database of this module's own
    return url


@pytest.fixture(scope="module")
async def mesh(models_database: str, seaweedfs: SeaweedFSServer) -> AsyncIterator[Mesh]:
    url = models_database
    await migrate.upgrade_async(url)
    settings = Settings(s3_bucket_prefix=f"md{secrets.token_hex(4)}", metrics_port=0, shutdown_grace_seconds=0.5,
                        s3_endpoint=seaweedfs.endpoint, s3_access_key=seaweedfs.access_key,
                        s3_secret_key=seaweedfs.secret_key)
    db = Database(url)
    store = ObjectStore(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    fleet = FakeFleet()  # type: ignore[abstract]
    fleet_server = GrpcServer(settings, "fleet-test", [ServiceBinding(
        "comfymesh.execution.v1.ExecutionService", fleet,
        execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server)], port=0, host="127.0.0.1")
    await fleet_server.start()
    locations = FleetLocations(lambda: grpc.aio.insecure_channel(fleet_server.address), ttl_seconds=0)
    config = ModelConfig(limits=Limits(MAX_BYTES, 1 << 20), part_bytes=PART_BYTES, download_ttl_seconds=600)
    service = ModelService(ModelRepository(db), ModelStorage.from_settings(store, settings), config,
                           references=ExecutionRepository(db), locations=locations)
    patch = pytest.MonkeyPatch()
    patch.setattr(transport, "caller_tenant", _tenant_of)  # tests act as several tenants (auth is another issue)
    server = GrpcServer(settings, "model-test", [ServiceBinding(
        "comfymesh.model.v1.ModelService", transport.ModelServicer(service, PageTokenCodec(b"model-test")),
        model_service_pb2_grpc.add_ModelServiceServicer_to_server)], port=0, host="127.0.0.1")
    await server.start()
    channel = grpc.aio.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)])
    try:
        stub: Stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[assignment]
        mesh = Mesh(service, stub, store, db, fleet, settings, seaweedfs)
        mesh.address = server.address
        yield mesh
    finally:
        patch.undo()
        await channel.close()
        await server.stop(0.1)
        await locations.close()
        await fleet_server.stop(0.1)
        await db.dispose()


# -- helpers -----------------------------------------------------------------------------------------------------


def _meta(tenant: str) -> list[tuple[str, str]]:
    return [(TENANT_HEADER, tenant)]


async def upload(mesh: Mesh, data: bytes | Path, name: str, kind: Any, *, chunk: int = 1 << 20,
                 tenant: str = "default", **metadata: Any) -> pb.Model:
    async def requests() -> AsyncIterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(metadata=pb.UploadModelMetadata(name=name, kind=kind, **metadata))
        if isinstance(data, Path):
            with data.open("rb") as f:
                while block := f.read(chunk):
                    yield pb.UploadModelRequest(chunk=block)
        else:
            for i in range(0, len(data), chunk):
                yield pb.UploadModelRequest(chunk=data[i:i + chunk])

    return await mesh.stub.UploadModel(requests(), metadata=_meta(tenant), timeout=120)


def _sync_upload_error(address: str, data: bytes, name: str) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    def requests() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(metadata=pb.UploadModelMetadata(name=name, kind=pb.MODEL_KIND_EMBEDDING))
        for i in range(0, len(data), 1 << 20):
            yield pb.UploadModelRequest(chunk=data[i:i + (1 << 20)])

    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        model_service_pb2_grpc.ModelServiceStub(channel).UploadModel(requests(), timeout=60)
    return _error(cast(Any, info.value))


def _error(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    status = rpc_status.from_call(cast(Any, exc))
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return exc.code(), info.reason, dict(info.metadata)


async def refused(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return _error(info.value)


def _unet(mc: int, ctx: int, adm: int | None, linear: bool) -> Any:
    return executor_models._unet(mc, (1,), (1,), (1,), (1, 1), mid=1, ctx=ctx, adm=adm, linear=linear)


def checkpoint(cfg: Any, **kwargs: Any) -> bytes:
    """A UNet checkpoint in the real single-file LDM layout, one byte per weight (the header is what is detected)."""
    layout = prefixed(unet_layout(cfg), "model.diffusion_model.")
    layout.update(prefixed(vae_layout(VaeSide(32, (1,), 1), VaeSide(32, (1,), 1)), "first_stage_model."))
    return safetensors_bytes(layout, dtype="F8_E4M3", **kwargs)


def _layout_of(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata()  # noqa: SIM118


FLUX = {f"model.diffusion_model.{k}": s for k, s in {
    "img_in.weight": (64, 64), "guidance_in.in_layer.weight": (64, 16), "txt_in.weight": (64, 32),
    "double_blocks.0.img_attn.norm.key_norm.scale": (16,), "double_blocks.0.img_attn.qkv.weight": (192, 64),
    "single_blocks.0.linear1.weight": (448, 64)}.items()}
SD3 = {f"model.diffusion_model.{k}": s for k, s in {
    "x_embedder.proj.weight": (128, 16, 2, 2), "joint_blocks.0.context_block.attn.qkv.weight": (384, 128),
    "joint_blocks.0.x_block.attn.qkv.weight": (384, 128), "context_embedder.weight": (128, 64)}.items()}


# -- uploads of each kind and architecture --------------------------------------------------------------------------


async def test_the_tiny_sd1_checkpoint_uploads_and_the_executor_can_resolve_it(mesh: Mesh) -> None:
    path = executor_models.make_tiny_sd1_checkpoint()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = await upload(mesh, path, "tiny/sd15.safetensors", pb.MODEL_KIND_CHECKPOINT, chunk=4 << 20,
                         size_bytes=path.stat().st_size, sha256=digest)
    assert (model.architecture, model.supported_by_builtin_engine, model.kind) == (
        pb.MODEL_ARCHITECTURE_SD1, True, pb.MODEL_KIND_CHECKPOINT)
    assert (model.sha256, model.size_bytes) == (digest, path.stat().st_size)
    assert set(model.dtypes) >= {"F16"}
    assert model.parameter_count > 150_000_000
    assert "comfymesh.test_model" in model.file_metadata
    assert model.properties["prediction"].string_value == "eps"
    assert [v.string_value for v in model.properties["text_encoders"].list_value.values] == ["l"]
    assert model.storage_uri == f"s3://{mesh.bucket}/checkpoints/tiny/sd15.safetensors"
    # The executor's own reader of the models bucket lists it under its folder and name, and trusts its digest.
    bucket = ModelBucket.connect(mesh.seaweedfs.endpoint, mesh.seaweedfs.access_key, mesh.seaweedfs.secret_key,
                                 mesh.bucket)
    remote = await asyncio.to_thread(bucket.list)
    assert remote["checkpoints/tiny/sd15.safetensors"].size == path.stat().st_size
    assert await asyncio.to_thread(bucket.sha256, "checkpoints/tiny/sd15.safetensors") == digest
    got = await mesh.stub.GetModel(pb.GetModelRequest(model_id=model.model_id))
    assert got == model


@pytest.mark.parametrize(("name", "build", "kind", "architecture", "supported", "properties"), [
    ("sd2.safetensors", lambda: checkpoint(_unet(320, 1024, None, True)), pb.MODEL_KIND_CHECKPOINT,
     pb.MODEL_ARCHITECTURE_SD2, True, {"family": "sd2", "prediction": "eps"}),
    ("sd2v.safetensors", lambda: checkpoint(executor_models.tiny_sd2_unet_config(), dtypes={
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias": "F16"}, data={
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias":
            (torch.randn(320, generator=torch.Generator().manual_seed(0)) * 0.2).half().numpy().tobytes()}),
     pb.MODEL_KIND_CHECKPOINT, pb.MODEL_ARCHITECTURE_SD2_V, True, {"prediction": "v"}),
    ("sdxl.safetensors", lambda: checkpoint(_unet(320, 2048, 2816, True)), pb.MODEL_KIND_CHECKPOINT,
     pb.MODEL_ARCHITECTURE_SDXL, True, {"family": "sdxl"}),
    ("refiner.safetensors", lambda: checkpoint(_unet(384, 1280, 2560, True)), pb.MODEL_KIND_CHECKPOINT,
     pb.MODEL_ARCHITECTURE_SDXL_REFINER, True, {"family": "sdxl_refiner"}),
    ("unet-sd1.safetensors", lambda: safetensors_bytes(unet_layout(executor_models.tiny_sd1_unet_config()),
                                                       dtype="F8_E4M3"),
     pb.MODEL_KIND_DIFFUSION_MODEL, pb.MODEL_ARCHITECTURE_SD1, True, {"detected_kind": "diffusion_model"}),
    ("flux-dev.safetensors", lambda: safetensors_bytes(FLUX), pb.MODEL_KIND_CHECKPOINT, pb.MODEL_ARCHITECTURE_FLUX,
     False, {"family": "flux", "variant": "dev"}),
    ("sd3.safetensors", lambda: safetensors_bytes(SD3), pb.MODEL_KIND_DIFFUSION_MODEL, pb.MODEL_ARCHITECTURE_SD3,
     False, {"family": "sd3"}),
    ("vae.safetensors", lambda: safetensors_bytes(vae_layout(VaeSide(32, (1, 2), 1), VaeSide(32, (1, 2), 1))),
     pb.MODEL_KIND_VAE, pb.MODEL_ARCHITECTURE_UNSPECIFIED, True, {"latent_channels": 4}),
    ("vae-flux.safetensors", lambda: safetensors_bytes(vae_layout(VaeSide(32, (1,), 1), VaeSide(32, (1,), 1),
                                                                  z_channels=16)),
     pb.MODEL_KIND_VAE, pb.MODEL_ARCHITECTURE_OTHER, False, {"latent_channels": 16}),
    ("cn.safetensors", lambda: safetensors_bytes(prefixed(controlnet_layout(executor_models.tiny_sd1_unet_config()),
                                                          "control_model."), dtype="F8_E4M3"),
     pb.MODEL_KIND_CONTROLNET, pb.MODEL_ARCHITECTURE_SD1, True, {"controlnet_layout": "ldm"}),
    ("ti.safetensors", lambda: safetensors_bytes({"clip_l": (2, 768), "clip_g": (2, 1280)}),
     pb.MODEL_KIND_EMBEDDING, pb.MODEL_ARCHITECTURE_SDXL, False, {"vectors": 2}),
    ("clip_l.safetensors", lambda: safetensors_bytes({"text_model.embeddings.token_embedding.weight": (64, 768),
                                                      "text_model.encoder.layers.0.mlp.fc1.weight": (8, 768)}),
     pb.MODEL_KIND_TEXT_ENCODER, pb.MODEL_ARCHITECTURE_UNSPECIFIED, True, {"text_encoder": "clip_l"}),
    ("esrgan.safetensors", lambda: safetensors_bytes({"model.0.weight": (64, 3, 3, 3), "model.0.bias": (64,)}),
     pb.MODEL_KIND_UPSCALE_MODEL, pb.MODEL_ARCHITECTURE_UNSPECIFIED, False, {"detected_kind": "upscale_model"}),
    ("vit.safetensors", lambda: safetensors_bytes({"vision_model.embeddings.patch_embedding.weight": (64, 3, 14, 14)}),
     pb.MODEL_KIND_CLIP_VISION, pb.MODEL_ARCHITECTURE_UNSPECIFIED, False, {"detected_kind": "clip_vision"}),
])
async def test_each_kind_and_architecture_is_detected(mesh: Mesh, name: str, build: Any, kind: int,
                                                      architecture: int, supported: bool,
                                                      properties: Mapping[str, object]) -> None:
    data = build()
    model = await upload(mesh, data, name, kind, size_bytes=len(data))
    assert (model.architecture, model.supported_by_builtin_engine) == (architecture, supported)
    for key, value in properties.items():
        got = model.properties[key]
        assert (got.string_value if isinstance(value, str) else got.int_value) == value
    assert model.size_bytes == len(data)
    assert model.sha256 == hashlib.sha256(data).hexdigest()
    assert model.parameter_count > 0


async def test_a_lora_keeps_its_training_metadata_and_reports_base_and_rank(mesh: Mesh, tmp_path: Path) -> None:
    path = executor_models.make_tiny_lora(tmp_path / "l.safetensors", executor_models.make_tiny_sd1_checkpoint(),
                                          rank=4)
    model = await upload(mesh, path.read_bytes(), "styles/ink.safetensors", pb.MODEL_KIND_LORA)
    assert (model.architecture, model.lora_rank, model.supported_by_builtin_engine) == (
        pb.MODEL_ARCHITECTURE_SD1, 4, True)
    assert model.file_metadata["ss_network_dim"] == "4"
    assert model.file_metadata["ss_base_model_version"] == "sd_v1"
    assert model.storage_uri.endswith("/loras/styles/ink.safetensors")
    # The same LoRA uploaded as a checkpoint is refused: its keys say what it is.
    code, reason, meta = await refused(upload(mesh, path.read_bytes(), "ink-as-ckpt.safetensors",
                                              pb.MODEL_KIND_CHECKPOINT))
    assert (code, reason, meta["problem"], meta["detected_kind"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "MODEL_FILE_INVALID", "KIND_MISMATCH", "lora")


# -- refusals -------------------------------------------------------------------------------------------------------


def _torch_pickle() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(64)}}, buffer)
    return buffer.getvalue()


async def test_bad_files_are_refused_with_typed_reasons_and_nothing_is_stored(mesh: Mesh) -> None:
    good = safetensors_bytes({"emb_params": (4, 768)})
    head_len = 8 + int.from_bytes(good[:8], "little")
    oversized = (2 << 20).to_bytes(8, "little") + b"{" + b" " * 64
    cases: list[tuple[str, bytes, dict[str, Any], str, str]] = [
        ("pickle.safetensors", pickle.dumps({"w": [0.0] * 100}, protocol=4), {}, "MODEL_FORMAT_UNSAFE", "PICKLE"),
        ("torch.safetensors", _torch_pickle(), {}, "MODEL_FORMAT_UNSAFE", "ZIP_ARCHIVE"),
        ("outside.safetensors", good[:-100], {"size_bytes": len(good) - 100}, "MODEL_FILE_INVALID",
         "OFFSETS_OUT_OF_BOUNDS"),
        ("truncated.safetensors", good[:head_len + 10], {"size_bytes": len(good)}, "UPLOAD_INCOMPLETE", ""),
        ("oversized.safetensors", oversized, {}, "MODEL_FILE_INVALID", "HEADER_TOO_LARGE"),
        ("checksum.safetensors", good, {"sha256": "0" * 64}, "MODEL_CHECKSUM_MISMATCH", ""),
    ]
    before = await mesh.keys()
    for name, data, metadata, reason, problem in cases:
        code, got, meta = await refused(upload(mesh, data, name, pb.MODEL_KIND_EMBEDDING, **metadata))
        assert (code, got, meta.get("problem", "")) == (grpc.StatusCode.INVALID_ARGUMENT, reason, problem), name
    # Refused by extension before any byte: the pickle suffixes.
    code, got, _ = await refused(upload(mesh, good, "sd15.ckpt", pb.MODEL_KIND_CHECKPOINT))
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, "MODEL_FORMAT_UNSAFE")
    assert await mesh.keys() == before  # no object, no sidecar
    listed = await mesh.stub.ListModels(pb.ListModelsRequest(kind=pb.MODEL_KIND_EMBEDDING, page_size=1000))
    assert not {m.name for m in listed.models} & {c[0] for c in cases}
    # The names are free again: a good file under one of them is accepted.
    model = await upload(mesh, good, "truncated.safetensors", pb.MODEL_KIND_EMBEDDING)
    assert model.size_bytes == len(good)


async def test_too_large_files_are_refused_before_their_bytes(mesh: Mesh) -> None:
    code, reason, _ = await refused(upload(mesh, b"", "big.safetensors", pb.MODEL_KIND_CHECKPOINT,
                                           size_bytes=MAX_BYTES + 1))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MODEL_TOO_LARGE")
    # A header describing more data than the limit is refused as soon as the header is in.
    huge = safetensors_bytes({"t": (1,)})
    header = huge.replace(b'"shape":[1],"data_offsets":[0,2]',
                          f'"shape":[{MAX_BYTES}],"data_offsets":[0,{MAX_BYTES * 2}]'.encode())
    n = int.from_bytes(header[:8], "little") + len(header) - len(huge)
    header = n.to_bytes(8, "little") + header[8:8 + n]
    code, reason, _ = await refused(upload(mesh, header, "big2.safetensors", pb.MODEL_KIND_CHECKPOINT))
    assert reason == "MODEL_TOO_LARGE"


async def test_bad_requests(mesh: Mesh) -> None:
    async def no_metadata() -> AsyncIterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(chunk=b"abc")

    code, reason, _ = await refused(mesh.stub.UploadModel(no_metadata()))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    code, reason, _ = await refused(upload(mesh, b"", "x.safetensors", pb.MODEL_KIND_UNSPECIFIED))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    for call in (mesh.stub.GetModel(pb.GetModelRequest(model_id="nope")),
                 mesh.stub.DeleteModel(pb.DeleteModelRequest(model_id="")),
                 mesh.stub.ImportModel(pb.ImportModelRequest(name="x.safetensors", kind=pb.MODEL_KIND_LORA)),
                 mesh.stub.ListModels(pb.ListModelsRequest(page_size=-1)),
                 mesh.stub.ListModels(pb.ListModelsRequest(architecture=cast(Any, 99)))):
        assert (await refused(call))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, reason, _ = await refused(mesh.stub.GetModel(pb.GetModelRequest(model_id="0" * 32)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")


# -- deduplication and idempotency ----------------------------------------------------------------------------------


async def test_identical_files_deduplicate(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (3, 768)}, metadata={"dedup": secrets.token_hex(4)})
    first = await upload(mesh, data, "first.safetensors", pb.MODEL_KIND_EMBEDDING)
    keys = await mesh.keys()
    second = await upload(mesh, data, "second.safetensors", pb.MODEL_KIND_EMBEDDING)
    assert second.model_id == first.model_id and second.name == "first.safetensors"
    assert await mesh.keys() == keys  # the second copy was not kept
    # A declared digest the tenant already stores returns that model without a byte transferred.
    declared = await upload(mesh, b"", "third.safetensors", pb.MODEL_KIND_EMBEDDING, sha256=first.sha256)
    assert declared.model_id == first.model_id
    # The same bytes in another folder are another model (another object the executors resolve).
    other = await upload(mesh, data, "first.safetensors", pb.MODEL_KIND_TEXT_ENCODER)
    assert other.model_id != first.model_id
    # The same name with other bytes is taken.
    changed = safetensors_bytes({"emb_params": (5, 768)})
    code, reason, _ = await refused(upload(mesh, changed, "first.safetensors", pb.MODEL_KIND_EMBEDDING))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")


async def test_a_retried_upload_with_the_same_request_id_returns_the_same_model(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (1, 768)}, metadata={"r": secrets.token_hex(4)})
    request_id = "6f1c4e1e-2b7a-4d8e-9f2a-0c1d2e3f4a5b"
    first = await upload(mesh, data, "retried.safetensors", pb.MODEL_KIND_EMBEDDING, request_id=request_id)
    again = await upload(mesh, data, "retried.safetensors", pb.MODEL_KIND_EMBEDDING, request_id=request_id)
    assert again == first


# -- presigned uploads ----------------------------------------------------------------------------------------------


async def test_presigned_single_put_upload_is_restartable(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (1000, 768)}, metadata={"p": secrets.token_hex(4)}, fill="random")
    upload_ = await mesh.stub.CreateModelUpload(pb.CreateModelUploadRequest(metadata=pb.UploadModelMetadata(
        name="presigned.safetensors", kind=pb.MODEL_KIND_EMBEDDING, size_bytes=len(data))))
    assert upload_.upload_url and not upload_.parts
    complete = pb.CompleteModelUploadRequest(upload_id=upload_.upload_id)
    code, reason, _ = await refused(mesh.stub.CompleteModelUpload(complete))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_INCOMPLETE")  # nothing PUT yet
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        assert (await http.put(upload_.upload_url, content=data[: len(data) // 2])).status_code == 200
        code, reason, _ = await refused(mesh.stub.CompleteModelUpload(complete))
        assert reason == "UPLOAD_INCOMPLETE"  # cut short: PUT it again
        assert (await http.put(upload_.upload_url, content=data)).status_code == 200
    model = await mesh.stub.CompleteModelUpload(complete)
    assert (model.architecture, model.size_bytes) == (pb.MODEL_ARCHITECTURE_SD1, len(data))
    assert not [k for k in await mesh.keys() if k.startswith("_uploads/")]  # staging removed
    assert await mesh.stub.CompleteModelUpload(complete) == model  # completing again is harmless
    got = await mesh.stub.GetModelUpload(pb.GetModelUploadRequest(upload_id=upload_.upload_id))
    assert (got.model_id, got.upload_url) == (model.model_id, "")


async def test_presigned_multipart_upload_resumes_missing_parts(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (7_000, 768)}, fill="random")  # ~10.3 MB: 3 parts of 5 MiB
    created = await mesh.stub.CreateModelUpload(pb.CreateModelUploadRequest(metadata=pb.UploadModelMetadata(
        name="multipart.safetensors", kind=pb.MODEL_KIND_EMBEDDING, size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest())))
    assert (created.upload_url, created.part_size_bytes, len(created.parts)) == ("", PART_BYTES, 3)
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        async def put(part: pb.ModelUploadPart) -> None:
            body = data[part.offset: part.offset + part.size_bytes]
            response = await http.put(part.upload_url, content=body)
            assert response.status_code == 200, response.text

        await put(created.parts[0])
        await put(created.parts[2])
        request = pb.CompleteModelUploadRequest(upload_id=created.upload_id)
        _code, reason, meta = await refused(mesh.stub.CompleteModelUpload(request))
        assert (reason, meta["missing_parts"]) == ("UPLOAD_INCOMPLETE", "2")
        resumed = await mesh.stub.GetModelUpload(pb.GetModelUploadRequest(upload_id=created.upload_id))
        assert [p.uploaded for p in resumed.parts] == [True, False, True]
        await put(resumed.parts[1])
    model = await mesh.stub.CompleteModelUpload(request)
    assert (model.sha256, model.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))


async def test_an_abandoned_presigned_upload_is_deleted_with_its_bytes(mesh: Mesh) -> None:
    created = await mesh.stub.CreateModelUpload(pb.CreateModelUploadRequest(metadata=pb.UploadModelMetadata(
        name="abandoned.safetensors", kind=pb.MODEL_KIND_VAE)))
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        assert (await http.put(created.upload_url, content=b"partial")).status_code == 200
    assert any(k.endswith(created.upload_id) for k in await mesh.keys())
    await mesh.stub.DeleteModelUpload(pb.DeleteModelUploadRequest(upload_id=created.upload_id))
    assert not any(k.endswith(created.upload_id) for k in await mesh.keys())
    code, _, _ = await refused(mesh.stub.GetModelUpload(pb.GetModelUploadRequest(upload_id=created.upload_id)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_refused_presigned_file_is_not_kept(mesh: Mesh) -> None:
    created = await mesh.stub.CreateModelUpload(pb.CreateModelUploadRequest(metadata=pb.UploadModelMetadata(
        name="evil.safetensors", kind=pb.MODEL_KIND_CHECKPOINT)))
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        assert (await http.put(created.upload_url, content=_torch_pickle())).status_code == 200
    _code, reason, _ = await refused(mesh.stub.CompleteModelUpload(pb.CompleteModelUploadRequest(
        upload_id=created.upload_id)))
    assert reason == "MODEL_FORMAT_UNSAFE"
    assert not any(k.endswith(created.upload_id) for k in await mesh.keys())


async def test_the_janitor_sweeps_expired_uploads_and_stalled_reservations(mesh: Mesh) -> None:
    created = await mesh.service.create_upload("default", UploadSpec("expiring.safetensors", ModelKind.VAE))
    expired = datetime.now(UTC) + timedelta(days=2)
    from services.model.repository import ModelRow, UploadRow

    async with mesh.db.session() as session:
        row = await session.get(UploadRow, created.session.id)
        assert row is not None
        row.expire_time = datetime.now(UTC) - timedelta(seconds=1)
        stalled = ModelRow(id=time_ordered_id(), tenant="default", name="stalled.safetensors", kind="VAE",
                           state="PENDING", architecture="UNSPECIFIED", supported=False, size_bytes=0, sha256="",
                           parameter_count=0, dtypes_json="[]", lora_rank=0, file_metadata_json="{}",
                           properties_json="{}", bucket=mesh.bucket, object_key="vae/stalled.safetensors",
                           request_id=None, create_time=expired - timedelta(days=3),
                           update_time=expired - timedelta(days=3))
        session.add(stalled)
    uploads, reservations = await mesh.service.sweep()
    assert uploads >= 1 and reservations >= 1
    assert await mesh.service.repository.get_upload("default", created.session.id) is None
    assert await mesh.service.repository.find_by_name("default", ModelKind.VAE, "stalled.safetensors",
                                                     any_state=True) is None


# -- imports --------------------------------------------------------------------------------------------------------


async def test_import_from_the_bucket(mesh: Mesh) -> None:
    await mesh.store.ensure_bucket(mesh.bucket)
    data = safetensors_bytes(vae_layout(VaeSide(32, (1,), 1), VaeSide(32, (1,), 1)), metadata={"i": "1"})
    await mesh.store.put_bytes(mesh.bucket, "imports/default/dropped.safetensors", data)
    model = await mesh.stub.ImportModel(pb.ImportModelRequest(
        name="imported.safetensors", kind=pb.MODEL_KIND_VAE, object_key="imports/default/dropped.safetensors"))
    assert model.storage_uri.endswith("/vae/imported.safetensors")
    # In place: an operator's file already at its model key is validated and registered where it is.
    other = safetensors_bytes(vae_layout(VaeSide(32, (1,), 1), VaeSide(32, (1,), 1)), metadata={"i": "2"})
    await mesh.store.put_bytes(mesh.bucket, "vae/operator.safetensors", other)
    in_place = await mesh.stub.ImportModel(pb.ImportModelRequest(
        name="operator.safetensors", kind=pb.MODEL_KIND_VAE, object_key="vae/operator.safetensors"))
    assert in_place.sha256 == hashlib.sha256(other).hexdigest()
    assert "vae/operator.safetensors.sha256" in await mesh.keys()
    for key, code in (("_uploads/default/x", grpc.StatusCode.INVALID_ARGUMENT),
                      ("imports/acme/x.safetensors", grpc.StatusCode.INVALID_ARGUMENT),
                      ("imports/default/missing.safetensors", grpc.StatusCode.NOT_FOUND),
                      ("vae/imported.safetensors", grpc.StatusCode.ALREADY_EXISTS)):
        got, _, _ = await refused(mesh.stub.ImportModel(pb.ImportModelRequest(
            name="again.safetensors", kind=pb.MODEL_KIND_VAE, object_key=key)))
        assert got == code, key


class _Files(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        if self.path == "/slow":
            import time

            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"\x10")
            self.wfile.flush()
            time.sleep(3)
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


async def test_import_from_a_url(mesh: Mesh, http_files: str) -> None:
    data = safetensors_bytes({"emb_params": (2, 1024)}, metadata={"u": secrets.token_hex(4)})
    _Files.files["/ti.safetensors"] = data
    # The SSRF guard: a loopback address is not fetched by default.
    code, reason, meta = await refused(mesh.stub.ImportModel(pb.ImportModelRequest(
        name="fetched.safetensors", kind=pb.MODEL_KIND_EMBEDDING, url=f"{http_files}/ti.safetensors")))
    assert (code, reason, meta["address_kind"]) == (grpc.StatusCode.INVALID_ARGUMENT, "URL_NOT_ALLOWED", "loopback")
    code, reason, _ = await refused(mesh.stub.ImportModel(pb.ImportModelRequest(
        name="fetched.safetensors", kind=pb.MODEL_KIND_EMBEDDING, url="file:///etc/passwd")))
    assert reason == "URL_NOT_ALLOWED"
    # Where a deployment allows private addresses: fetched, with the size limit and the deadline.
    allowing = ModelService(mesh.service.repository, mesh.service.storage, ModelConfig(
        limits=Limits(len(data) + 10, 1 << 20), allow_private_urls=True, import_timeout_seconds=1.5),
        references=ExecutionRepository(mesh.db))
    spec = UploadSpec("fetched.safetensors", ModelKind.EMBEDDING)
    model = await allowing.import_url("default", spec, f"{http_files}/ti.safetensors")
    assert (model.sha256, model.description.architecture) == (hashlib.sha256(data).hexdigest(), "SD2")
    _Files.files["/big.safetensors"] = data + bytes(100)
    with pytest.raises(ServiceError) as info:
        await allowing.import_url("default", UploadSpec("big.safetensors", ModelKind.EMBEDDING),
                                  f"{http_files}/big.safetensors")
    assert info.value.reason == Reason.MODEL_TOO_LARGE
    with pytest.raises(ServiceError) as info:
        await allowing.import_url("default", UploadSpec("slow.safetensors", ModelKind.EMBEDDING),
                                  f"{http_files}/slow")
    assert info.value.reason == Reason.URL_FETCH_FAILED
    with pytest.raises(ServiceError) as info:
        await allowing.import_url("default", UploadSpec("gone.safetensors", ModelKind.EMBEDDING),
                                  f"{http_files}/gone.safetensors")
    assert (info.value.reason, info.value.metadata["status"]) == (Reason.URL_FETCH_FAILED, "404")
    assert await mesh.service.repository.find_by_name("default", ModelKind.EMBEDDING, "slow.safetensors",
                                                     any_state=True) is None


# -- reads, availability, deletion ----------------------------------------------------------------------------------


async def test_list_filters_and_pages(mesh: Mesh) -> None:
    for i in range(5):
        data = safetensors_bytes({"emb_params": (1, 768)}, metadata={"page": f"{i}-{secrets.token_hex(4)}"})
        await upload(mesh, data, f"paged/e{i}.safetensors", pb.MODEL_KIND_EMBEDDING)
    names: list[str] = []
    request = pb.ListModelsRequest(page_size=2, name_contains="PAGED/", kind=pb.MODEL_KIND_EMBEDDING)
    while True:
        page = await mesh.stub.ListModels(request)
        names += [m.name for m in page.models]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert names == [f"paged/e{i}.safetensors" for i in range(5)]
    first = await mesh.stub.ListModels(pb.ListModelsRequest(page_size=2, name_contains="paged/"))
    code, reason, _ = await refused(mesh.stub.ListModels(pb.ListModelsRequest(
        page_size=2, name_contains="other", page_token=first.next_page_token)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    sd1 = await mesh.stub.ListModels(pb.ListModelsRequest(architecture=pb.MODEL_ARCHITECTURE_SD1, page_size=1000))
    assert sd1.models and all(m.architecture == pb.MODEL_ARCHITECTURE_SD1 for m in sd1.models)


async def test_locations_come_from_the_executors_heartbeats(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (6, 768)}, metadata={"loc": secrets.token_hex(4)})
    model = await upload(mesh, data, "located.safetensors", pb.MODEL_KIND_EMBEDDING)
    seen = datetime.now(UTC).replace(microsecond=0)

    def executor(executor_id: str, *models: executor_service_pb2.CachedModel) -> execution_service_pb2.Executor:
        message = execution_service_pb2.Executor(executor_id=executor_id, description=(
            executor_service_pb2.ExecutorDescription(executor_id=executor_id, cached_models=models)))
        message.last_heartbeat_time.FromDatetime(seen)
        return message

    mesh.fleet.executors = [
        executor("gpu-a", executor_service_pb2.CachedModel(name="located.safetensors", sha256=model.sha256,
                                                           tier=executor_service_pb2.CACHE_TIER_RAM),
                 executor_service_pb2.CachedModel(name="located.safetensors", sha256=model.sha256,
                                                  tier=executor_service_pb2.CACHE_TIER_DISK)),
        executor("gpu-b", executor_service_pb2.CachedModel(name="located.safetensors",
                                                           tier=executor_service_pb2.CACHE_TIER_GPU)),
        executor("gpu-c", executor_service_pb2.CachedModel(name="located.safetensors", sha256="1" * 64,
                                                           tier=executor_service_pb2.CACHE_TIER_GPU)),
    ]
    try:
        got = await mesh.stub.GetModel(pb.GetModelRequest(model_id=model.model_id))
    finally:
        mesh.fleet.executors = []
    where = [(loc.executor_id, loc.tier) for loc in got.locations]
    assert where == [("gpu-b", executor_service_pb2.CACHE_TIER_GPU), ("gpu-a", executor_service_pb2.CACHE_TIER_RAM),
                     ("gpu-a", executor_service_pb2.CACHE_TIER_DISK)]
    assert got.locations[0].report_time.ToDatetime(tzinfo=UTC) == seen


async def test_download_url_serves_the_stored_bytes(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (9, 768)}, metadata={"dl": secrets.token_hex(4)}, fill="random")
    model = await upload(mesh, data, "download.safetensors", pb.MODEL_KIND_EMBEDDING)
    link = await mesh.stub.GetModelDownloadUrl(pb.GetModelDownloadUrlRequest(model_id=model.model_id))
    assert link.expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(minutes=5)
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        response = await http.get(link.url)
    assert response.content == data


async def test_delete_is_refused_while_executions_use_the_model(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (8, 768)}, metadata={"del": secrets.token_hex(4)})
    model = await upload(mesh, data, "in-use.safetensors", pb.MODEL_KIND_EMBEDDING)
    executions = ExecutionRepository(mesh.db)
    now = datetime.now(UTC)
    record = ExecutionRecord(id=time_ordered_id(), tenant="default", state=ExecutionState.QUEUED, create_time=now,
                             update_time=now, graph={"1": {"class_type": "CheckpointLoaderSimple",
                                                           "inputs": {"ckpt_name": "in-use.safetensors"}}})
    await executions.add(record)
    code, reason, meta = await refused(mesh.stub.DeleteModel(pb.DeleteModelRequest(model_id=model.model_id)))
    assert (code, reason, meta["executions"]) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_IN_USE", record.id)
    assert await executions.update_active(record.id, state=ExecutionState.SUCCEEDED)
    await mesh.stub.DeleteModel(pb.DeleteModelRequest(model_id=model.model_id))
    code, reason, _ = await refused(mesh.stub.GetModel(pb.GetModelRequest(model_id=model.model_id)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert not {"embeddings/in-use.safetensors", "embeddings/in-use.safetensors.sha256"} & await mesh.keys()
    # The name can be used again.
    assert (await upload(mesh, data, "in-use.safetensors", pb.MODEL_KIND_EMBEDDING)).sha256 == model.sha256


async def test_tenants_are_isolated(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (10, 768)}, metadata={"t": secrets.token_hex(4)})
    acme = await upload(mesh, data, "private.safetensors", pb.MODEL_KIND_EMBEDDING, tenant="acme")
    assert acme.tenant == "acme"
    assert acme.storage_uri.endswith("/embeddings/tenants/acme/private.safetensors")
    other = _meta("globex")
    for call in (mesh.stub.GetModel(pb.GetModelRequest(model_id=acme.model_id), metadata=other),
                 mesh.stub.DeleteModel(pb.DeleteModelRequest(model_id=acme.model_id), metadata=other),
                 mesh.stub.GetModelDownloadUrl(pb.GetModelDownloadUrlRequest(model_id=acme.model_id),
                                               metadata=other)):
        assert (await refused(call))[0] == grpc.StatusCode.NOT_FOUND
    listed = await mesh.stub.ListModels(pb.ListModelsRequest(page_size=1000), metadata=other)
    assert acme.model_id not in {m.model_id for m in listed.models}
    # No cross-tenant deduplication (it would tell one tenant what another stores) and names are per tenant.
    globex = await upload(mesh, data, "private.safetensors", pb.MODEL_KIND_EMBEDDING, tenant="globex")
    assert globex.model_id != acme.model_id and globex.storage_uri != acme.storage_uri
    declared = await upload(mesh, data, "guess.safetensors", pb.MODEL_KIND_EMBEDDING, tenant="initech",
                            sha256=acme.sha256)
    assert declared.tenant == "initech"
    # Another tenant's objects cannot be imported, nor its presigned uploads seen.
    code, _, _ = await refused(mesh.stub.ImportModel(pb.ImportModelRequest(
        name="stolen.safetensors", kind=pb.MODEL_KIND_EMBEDDING,
        object_key="embeddings/tenants/acme/private.safetensors"), metadata=other))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    created = await mesh.stub.CreateModelUpload(pb.CreateModelUploadRequest(metadata=pb.UploadModelMetadata(
        name="u.safetensors", kind=pb.MODEL_KIND_VAE)), metadata=_meta("acme"))
    code, _, _ = await refused(mesh.stub.CompleteModelUpload(pb.CompleteModelUploadRequest(
        upload_id=created.upload_id), metadata=other))
    assert code == grpc.StatusCode.NOT_FOUND
    assert (await mesh.stub.GetModel(pb.GetModelRequest(model_id=acme.model_id), metadata=_meta("acme"))).name == \
        "private.safetensors"


async def test_a_cancelled_upload_leaves_nothing_and_frees_its_name(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (20_000, 768)}, fill="random")  # ~30 MB
    sent = asyncio.Event()
    release = asyncio.Event()

    async def requests() -> AsyncIterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(metadata=pb.UploadModelMetadata(name="cancelled.safetensors",
                                                                    kind=pb.MODEL_KIND_EMBEDDING))
        for i in range(0, 20 << 20, 1 << 20):
            yield pb.UploadModelRequest(chunk=data[i:i + (1 << 20)])
        sent.set()
        await release.wait()  # the client stalls with the upload unfinished

    call = mesh.stub.UploadModel(requests())
    await asyncio.wait_for(sent.wait(), 30)
    # While the first upload holds the name, a second one of the same name is refused at once, while its client is
    # still sending. (The blocking client: grpc-python's asyncio client can report such an early status as
    # INTERNAL, grpc/grpc#36066; the sync client and other languages report the server's status.)
    error = await asyncio.to_thread(_sync_upload_error, mesh.address, data, "cancelled.safetensors")
    assert (error[0], error[1]) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    call.cancel()
    release.set()
    for _ in range(100):
        if await mesh.service.repository.find_by_name("default", ModelKind.EMBEDDING, "cancelled.safetensors",
                                                      any_state=True) is None:
            break
        await asyncio.sleep(0.1)
    assert "embeddings/cancelled.safetensors" not in await mesh.keys()
    model = await upload(mesh, data, "cancelled.safetensors", pb.MODEL_KIND_EMBEDDING, chunk=4 << 20)
    assert model.size_bytes == len(data)


async def test_without_an_object_store_the_catalog_reads_and_storing_is_unavailable(mesh: Mesh) -> None:
    storeless = ModelService(mesh.service.repository, None, ModelConfig(limits=Limits(MAX_BYTES, 1 << 20)),
                             references=ExecutionRepository(mesh.db))

    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    with pytest.raises(ServiceError) as info:
        await storeless.upload("default", UploadSpec("x.safetensors", ModelKind.LORA), nothing())
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.UNAVAILABLE, Reason.BACKEND_UNAVAILABLE)
    page, _ = await storeless.list("default", ModelFilter(), after=None, limit=5)
    assert page


async def test_the_client_other_services_validate_model_names_with(mesh: Mesh) -> None:
    data = safetensors_bytes({"emb_params": (11, 768)}, metadata={"c": secrets.token_hex(4)})
    await upload(mesh, data, "catalog/ti.safetensors", pb.MODEL_KIND_EMBEDDING)
    await upload(mesh, data, "mine.safetensors", pb.MODEL_KIND_EMBEDDING, tenant="acme")
    catalog = ModelCatalog(lambda: grpc.aio.insecure_channel(mesh.address), ttl_seconds=60)
    try:
        names = await catalog.names()
        assert "catalog/ti.safetensors" in names["embeddings"]
        assert "mine.safetensors" not in names["embeddings"]
        assert set(names) == {"checkpoints", "loras", "vae", "controlnet", "upscale_models", "embeddings",
                              "text_encoders", "diffusion_models", "clip_vision"}
        acme = await catalog.names([(TENANT_HEADER, "acme")])
        assert {"mine.safetensors", "tenants/acme/mine.safetensors"} <= acme["embeddings"]
        assert "catalog/ti.safetensors" not in acme["embeddings"]
        assert await catalog.names() is names  # cached
    finally:
        await catalog.close()
