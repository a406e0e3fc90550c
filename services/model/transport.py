"""ModelService over gRPC: request validation and proto ⇄ domain conversion around `services.model.service`.

REST (through Envoy's transcoder): `POST /v1/models:upload` takes the client stream as a JSON array of
UploadModelRequest messages (`[{"metadata": {...}}, {"chunk": "<base64>"}, ...]`), bounded by the gateway's body
limit, so it suits small files; large files use the presigned flow (`POST /v1/modelUploads`, PUT the bytes to the
returned URL(s), `POST /v1/modelUploads/{id}:complete`), whose bytes never pass through the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2, timestamp_pb2

from comfymesh.executor.v1 import executor_service_pb2
from comfymesh.model.v1 import model_service_pb2 as pb
from comfymesh.model.v1 import model_service_pb2_grpc
from service_runtime.errors import FieldViolation, invalid_argument
from service_runtime.grpc.identity import caller_tenant
from service_runtime.ids import is_valid_id
from service_runtime.pagination import PageSize, PageTokenCodec
from service_runtime.transport.graph_codec import value_to_proto
from services.model.domain import (
    Architecture,
    Location,
    ModelFilter,
    ModelKind,
    ModelRecord,
    UploadSpec,
    check_name,
    check_sha256,
)
from services.model.service import ModelService, UploadTicket

Context = grpc.aio.ServicerContext[Any, Any]
MODEL_PAGE_SIZE = PageSize(default=100, maximum=1000)
MAX_REQUEST_ID_LENGTH = 64
MAX_NAME_FILTER_LENGTH = 255

_KINDS: dict[int, ModelKind] = {
    pb.MODEL_KIND_CHECKPOINT: ModelKind.CHECKPOINT,
    pb.MODEL_KIND_LORA: ModelKind.LORA,
    pb.MODEL_KIND_VAE: ModelKind.VAE,
    pb.MODEL_KIND_CONTROLNET: ModelKind.CONTROLNET,
    pb.MODEL_KIND_UPSCALE_MODEL: ModelKind.UPSCALE_MODEL,
    pb.MODEL_KIND_EMBEDDING: ModelKind.EMBEDDING,
    pb.MODEL_KIND_TEXT_ENCODER: ModelKind.TEXT_ENCODER,
    pb.MODEL_KIND_DIFFUSION_MODEL: ModelKind.DIFFUSION_MODEL,
    pb.MODEL_KIND_CLIP_VISION: ModelKind.CLIP_VISION,
}
_KIND_PROTOS: dict[ModelKind, Any] = {v: k for k, v in _KINDS.items()}
_ARCHITECTURES: dict[int, Architecture] = {
    pb.MODEL_ARCHITECTURE_SD1: Architecture.SD1,
    pb.MODEL_ARCHITECTURE_SD2: Architecture.SD2,
    pb.MODEL_ARCHITECTURE_SD2_V: Architecture.SD2_V,
    pb.MODEL_ARCHITECTURE_SDXL: Architecture.SDXL,
    pb.MODEL_ARCHITECTURE_SDXL_REFINER: Architecture.SDXL_REFINER,
    pb.MODEL_ARCHITECTURE_SD3: Architecture.SD3,
    pb.MODEL_ARCHITECTURE_FLUX: Architecture.FLUX,
    pb.MODEL_ARCHITECTURE_OTHER: Architecture.OTHER,
}
_ARCHITECTURE_PROTOS: dict[Architecture, Any] = {v: k for k, v in _ARCHITECTURES.items()}
_TIERS: dict[str, executor_service_pb2.CacheTier.ValueType] = {
    "GPU": executor_service_pb2.CACHE_TIER_GPU,
    "RAM": executor_service_pb2.CACHE_TIER_RAM,
    "DISK": executor_service_pb2.CACHE_TIER_DISK,
    "OBJECT_STORE": executor_service_pb2.CACHE_TIER_OBJECT_STORE,
}


# -- proto ⇄ domain ------------------------------------------------------------------------------------------------


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _kind(value: int, field_path: str) -> ModelKind:
    kind = _KINDS.get(value)
    if kind is None:
        raise invalid_argument(f"{field_path} is required (a ModelKind other than MODEL_KIND_UNSPECIFIED)",
                               FieldViolation(field_path, "required", "REQUIRED"))
    return kind


def _request_id(value: str, field_path: str) -> str | None:
    if len(value) > MAX_REQUEST_ID_LENGTH:
        raise invalid_argument(f"{field_path} is longer than {MAX_REQUEST_ID_LENGTH} characters",
                               FieldViolation(field_path, "too long", "REQUEST_ID_TOO_LONG"))
    return value or None


def _size(value: int, field_path: str) -> int:
    if value < 0:
        raise invalid_argument(f"{field_path} must not be negative", FieldViolation(field_path, "negative",
                                                                                     "NEGATIVE_SIZE"))
    return value


def spec_from_metadata(metadata: pb.UploadModelMetadata, field_path: str) -> UploadSpec:
    return UploadSpec(name=check_name(metadata.name, f"{field_path}.name"),
                      kind=_kind(metadata.kind, f"{field_path}.kind"),
                      size_bytes=_size(metadata.size_bytes, f"{field_path}.size_bytes"),
                      sha256=check_sha256(metadata.sha256, f"{field_path}.sha256"),
                      request_id=_request_id(metadata.request_id, f"{field_path}.request_id"))


def _location(location: Location) -> pb.ModelLocation:
    tier = _TIERS.get(location.tier, executor_service_pb2.CACHE_TIER_UNSPECIFIED)
    return pb.ModelLocation(executor_id=location.executor_id, tier=tier, report_time=_timestamp(location.report_time))


def model_to_proto(record: ModelRecord, locations: list[Location] | None = None) -> pb.Model:
    d = record.description
    message = pb.Model(
        model_id=record.id, name=record.name, kind=_KIND_PROTOS[record.kind],
        architecture=_ARCHITECTURE_PROTOS.get(d.architecture, pb.MODEL_ARCHITECTURE_UNSPECIFIED),
        supported_by_builtin_engine=d.supported, size_bytes=record.size_bytes, sha256=record.sha256,
        parameter_count=d.parameter_count, dtypes=list(d.dtypes), lora_rank=d.lora_rank,
        file_metadata=d.file_metadata, storage_uri=f"s3://{record.bucket}/{record.object_key}",
        locations=[_location(loc) for loc in locations or []], tenant=record.tenant,
        create_time=_timestamp(record.create_time))
    for key, value in d.properties.items():
        message.properties[key].CopyFrom(value_to_proto(value, f"properties.{key}"))
    return message


def upload_to_proto(ticket: UploadTicket) -> pb.ModelUpload:
    session = ticket.session
    return pb.ModelUpload(
        upload_id=session.id, upload_url=ticket.upload_url, expire_time=_timestamp(ticket.url_expire_time),
        parts=[pb.ModelUploadPart(part_number=p.number, offset=p.offset, size_bytes=p.size, upload_url=p.url,
                                  uploaded=p.uploaded) for p in ticket.parts],
        part_size_bytes=session.part_size_bytes if ticket.parts else 0,
        metadata=pb.UploadModelMetadata(name=session.name, kind=_KIND_PROTOS[session.kind],
                                        size_bytes=session.size_bytes, sha256=session.sha256,
                                        request_id=session.request_id or ""),
        model_id=session.model_id or "")


def _check_id(value: str, field_path: str) -> str:
    if not value:
        raise invalid_argument(f"{field_path} is required", FieldViolation(field_path, "required", "REQUIRED"))
    if not is_valid_id(value):
        raise invalid_argument(f"{field_path} is not an id (32 lowercase hex characters)",
                               FieldViolation(field_path, "malformed id", "ID_MALFORMED"))
    return value


# -- the servicer --------------------------------------------------------------------------------------------------


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: ModelService, tokens: PageTokenCodec) -> None:
        self._service = service
        self._tokens = tokens

    async def _with_locations(self, records: list[ModelRecord]) -> list[pb.Model]:
        where = await self._service.locations(records)
        return [model_to_proto(r, where.get(r.id)) for r in records]

    async def UploadModel(self, request_iterator: AsyncIterator[pb.UploadModelRequest],
                          context: Context) -> pb.Model:
        tenant = caller_tenant(context)
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise invalid_argument("the first message of UploadModel must carry `metadata`",
                                   FieldViolation("metadata", "required first", "METADATA_FIRST"))
        spec = spec_from_metadata(first.metadata, "metadata")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in requests:
                if message.WhichOneof("part") == "metadata":
                    raise invalid_argument("only the first message of UploadModel may carry `metadata`",
                                           FieldViolation("metadata", "sent twice", "METADATA_REPEATED"))
                yield message.chunk

        record = await self._service.upload(tenant, spec, chunks())
        return (await self._with_locations([record]))[0]

    async def CreateModelUpload(self, request: pb.CreateModelUploadRequest, context: Context) -> pb.ModelUpload:
        if not request.HasField("metadata"):
            raise invalid_argument("metadata is required", FieldViolation("metadata", "required", "REQUIRED"))
        spec = spec_from_metadata(request.metadata, "metadata")
        return upload_to_proto(await self._service.create_upload(caller_tenant(context), spec))

    async def GetModelUpload(self, request: pb.GetModelUploadRequest, context: Context) -> pb.ModelUpload:
        upload_id = _check_id(request.upload_id, "upload_id")
        return upload_to_proto(await self._service.get_upload(caller_tenant(context), upload_id))

    async def DeleteModelUpload(self, request: pb.DeleteModelUploadRequest, context: Context) -> empty_pb2.Empty:
        await self._service.delete_upload(caller_tenant(context), _check_id(request.upload_id, "upload_id"))
        return empty_pb2.Empty()

    async def CompleteModelUpload(self, request: pb.CompleteModelUploadRequest, context: Context) -> pb.Model:
        upload_id = _check_id(request.upload_id, "upload_id")
        record = await self._service.complete_upload(caller_tenant(context), upload_id)
        return (await self._with_locations([record]))[0]

    async def ImportModel(self, request: pb.ImportModelRequest, context: Context) -> pb.Model:
        tenant = caller_tenant(context)
        spec = UploadSpec(name=check_name(request.name), kind=_kind(request.kind, "kind"),
                          sha256=check_sha256(request.sha256), request_id=_request_id(request.request_id,
                                                                                      "request_id"))
        source = request.WhichOneof("source")
        if source == "object_key":
            record = await self._service.import_object(tenant, spec, request.object_key)
        elif source == "url":
            record = await self._service.import_url(tenant, spec, request.url)
        else:
            raise invalid_argument("one of object_key or url is required",
                                   FieldViolation("source", "object_key or url required", "REQUIRED"))
        return (await self._with_locations([record]))[0]

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.Model:
        record = await self._service.get(caller_tenant(context), _check_id(request.model_id, "model_id"))
        return (await self._with_locations([record]))[0]

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        tenant = caller_tenant(context)
        size = MODEL_PAGE_SIZE.resolve(request.page_size)
        if len(request.name_contains) > MAX_NAME_FILTER_LENGTH:
            raise invalid_argument("name_contains is too long",
                                   FieldViolation("name_contains", "too long", "FILTER_TOO_LONG"))
        architecture = _ARCHITECTURES.get(request.architecture) if request.architecture else None
        if request.architecture and architecture is None:
            raise invalid_argument("architecture is not a known ModelArchitecture",
                                   FieldViolation("architecture", "unknown value", "UNKNOWN_ENUM_VALUE"))
        kind = _kind(request.kind, "kind") if request.kind else None
        flt = ModelFilter(kind=kind, architecture=architecture, name_contains=request.name_contains)
        query = {"list": "models", "kind": str(kind or ""), "architecture": str(architecture or ""),
                 "name_contains": request.name_contains}
        cursor = self._tokens.decode(request.page_token, query)
        after = (str(cursor["name"]), str(cursor["id"])) if cursor else None
        records, following = await self._service.list(tenant, flt, after=after, limit=size)
        token = self._tokens.encode({"name": following[0], "id": following[1]}, query) if following else ""
        return pb.ListModelsResponse(models=await self._with_locations(records), next_page_token=token)

    async def DeleteModel(self, request: pb.DeleteModelRequest, context: Context) -> empty_pb2.Empty:
        await self._service.delete(caller_tenant(context), _check_id(request.model_id, "model_id"))
        return empty_pb2.Empty()

    async def GetModelDownloadUrl(self, request: pb.GetModelDownloadUrlRequest,
                                  context: Context) -> pb.GetModelDownloadUrlResponse:
        url, expires = await self._service.download_url(caller_tenant(context),
                                                        _check_id(request.model_id, "model_id"))
        return pb.GetModelDownloadUrlResponse(url=url, expire_time=_timestamp(expires))
