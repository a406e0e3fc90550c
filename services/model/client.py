"""ModelService's client for other services: the caller's visible model names per ComfyUI folder, for validating
`ckpt_name`, `lora_name`... and for the node catalog's model lists.

The names are those the executors' loader nodes resolve (a model's object key without its folder), fetched with
ListModels page by page and kept for `ttl_seconds` so a burst of submissions costs one listing. The caller's
identity travels in `metadata` (the same call credentials the caller was given, once authentication exists).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import grpc.aio

from comfymesh.model.v1 import model_service_pb2 as pb
from comfymesh.model.v1 import model_service_pb2_grpc
from service_runtime.errors import unavailable
from service_runtime.errors.status import from_rpc_error
from services.model.domain import TENANTS_DIR

FOLDERS = {
    pb.MODEL_KIND_CHECKPOINT: "checkpoints", pb.MODEL_KIND_LORA: "loras", pb.MODEL_KIND_VAE: "vae",
    pb.MODEL_KIND_CONTROLNET: "controlnet", pb.MODEL_KIND_UPSCALE_MODEL: "upscale_models",
    pb.MODEL_KIND_EMBEDDING: "embeddings", pb.MODEL_KIND_TEXT_ENCODER: "text_encoders",
    pb.MODEL_KIND_DIFFUSION_MODEL: "diffusion_models", pb.MODEL_KIND_CLIP_VISION: "clip_vision",
}
MAX_PAGES = 100


def executor_name(model: pb.Model) -> str:
    """The name loader nodes use for this model: its object key without the bucket and folder."""
    key = model.storage_uri.split("/", 3)[-1] if model.storage_uri.startswith("s3://") else ""
    _folder, _, rest = key.partition("/")
    return rest or model.name


class ModelCatalog:
    def __init__(self, channel_factory: Callable[[], grpc.aio.Channel], ttl_seconds: float = 2.0) -> None:
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._ttl = ttl_seconds
        self._cache: dict[tuple[tuple[str, str], ...], tuple[float, dict[str, set[str]]]] = {}
        self._lock = asyncio.Lock()

    async def names(self, metadata: Sequence[tuple[str, str]] = ()) -> dict[str, set[str]]:
        """Folder → the model names the caller may use (its own and the shared models)."""
        key = tuple(sorted(metadata))
        async with self._lock:
            cached = self._cache.get(key)
            if cached is not None and time.monotonic() - cached[0] <= self._ttl:
                return cached[1]
            names = await self._fetch(metadata)
            self._cache[key] = (time.monotonic(), names)
            return names

    async def _fetch(self, metadata: Sequence[tuple[str, str]]) -> dict[str, set[str]]:
        if self._channel is None:
            self._channel = self._channel_factory()
        stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        names: dict[str, set[str]] = {folder: set() for folder in FOLDERS.values()}
        token = ""
        try:
            for _ in range(MAX_PAGES):
                page = await stub.ListModels(pb.ListModelsRequest(page_size=1000, page_token=token),
                                             metadata=tuple(metadata), timeout=10)
                for model in page.models:
                    folder = FOLDERS.get(model.kind)
                    if folder is not None:
                        name = executor_name(model)
                        names[folder].add(name)
                        if name.startswith(f"{TENANTS_DIR}/"):
                            names[folder].add(model.name)  # the tenant's own spelling, too
                token = page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as exc:
            raise unavailable(f"the model catalog is unavailable: {from_rpc_error(exc).message}") from exc
        return names

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
