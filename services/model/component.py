"""The model component: ModelService and its janitor, built from the shared process context."""

from __future__ import annotations

import asyncio
import logging

from comfymesh.model.v1 import model_service_pb2, model_service_pb2_grpc
from service_runtime.grpc import ServiceBinding, channel_to
from services.context import AppContext
from services.execution_store.repository import ExecutionRepository
from services.model.fleet import FleetLocations
from services.model.repository import ModelRepository
from services.model.safetensors_header import Limits
from services.model.service import ModelConfig, ModelService
from services.model.storage import ModelStorage
from services.model.transport import ModelServicer

MODEL_SERVICE = str(model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name)
log = logging.getLogger(__name__)


def build_model_service(ctx: AppContext) -> ModelService:
    settings = ctx.settings
    config = ModelConfig(
        limits=Limits(max_bytes=settings.model_max_bytes, max_header_bytes=settings.model_max_header_bytes),
        upload_ttl_seconds=settings.model_upload_ttl_seconds, part_bytes=settings.model_upload_part_bytes,
        download_ttl_seconds=settings.presigned_url_ttl_seconds,
        import_timeout_seconds=settings.model_import_timeout_seconds,
        allow_private_urls=settings.model_allow_private_urls,
        pending_stale_seconds=settings.model_pending_stale_seconds)
    locations = FleetLocations(lambda: channel_to("execution", settings), settings.model_locations_ttl_seconds)
    ctx.on_close(locations.close)
    # Without COMFYMESH_S3_ENDPOINT there is no object store: the model catalog is readable, storing and serving
    # files answers UNAVAILABLE.
    storage = ModelStorage.from_settings(ctx.object_store, settings) if settings.s3_endpoint else None
    return ModelService(ModelRepository(ctx.db), storage, config, references=ExecutionRepository(ctx.db),
                        locations=locations)


async def run_janitor(service: ModelService, interval_seconds: float) -> None:
    """Sweeps expired presigned uploads and abandoned upload reservations, forever."""
    while True:
        uploads, reservations = await service.sweep()
        if uploads or reservations:
            log.info("model janitor removed %d expired uploads and %d abandoned reservations", uploads,
                     reservations)
        await asyncio.sleep(interval_seconds)


def build_model_binding(ctx: AppContext) -> ServiceBinding:
    """ModelService on the context's database and object store, with the janitor as the background loop
    "model-janitor"."""
    service = build_model_service(ctx)
    interval = ctx.settings.model_janitor_interval_seconds
    if ctx.settings.s3_endpoint:
        ctx.background("model-janitor", lambda: run_janitor(service, interval))
    return ServiceBinding(MODEL_SERVICE, ModelServicer(service, ctx.page_tokens),
                          model_service_pb2_grpc.add_ModelServiceServicer_to_server)
