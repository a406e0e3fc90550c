"""ModelService's domain: every way a file arrives goes through one ingest path, and nothing is visible before it
validated.

Ingest (`_ingest`), whatever the source (a gRPC upload stream, a presigned upload's staging object, an object in
the bucket, an http(s) URL):

1. a retried request (same `request_id`) gets the model it created; a declared sha256 that the tenant already
   stores in that folder gets that model at once (deduplication without a byte transferred);
2. the name is reserved by a PENDING row (see repository), so two uploads of one name never write one object;
3. the bytes stream through `StreamValidator` (sniffing, header checks as soon as the header is in, size limit,
   sha256) into the model's final object key: a multipart upload that is aborted, leaving nothing, when any check
   fails — the last checks (size, extent, sha256) run before minio sees the end of the stream;
4. the header is described (architecture, LoRA rank, parameters, dtypes, `__metadata__`); identical bytes already
   stored as another model of the tenant in that folder make the new copy go and that model be returned
   (deduplication by content);
5. the sha256 sidecar is written (the executors verify downloads against it), then the row turns READY.

Presigned uploads (create → PUT → complete) land in a staging object that is re-streamed through the same path
on completion, so the bytes that were checked are the bytes that are stored, whatever a client PUTs meanwhile.
A single PUT is offered up to `model_upload_part_bytes`; larger files get a presigned S3 multipart upload whose
parts are PUT (and retried, or resumed after `GetModelUpload` says which are stored) independently.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import grpc
import httpx

from service_runtime.errors import (
    FieldViolation,
    Reason,
    ServiceError,
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
    permission_denied,
    unavailable,
)
from service_runtime.ids import time_ordered_id
from service_runtime.net import url_guard
from services.model.architecture import content_kind, describe, sd2_probe_keys
from services.model.availability import CopySource, locate
from services.model.domain import (
    SHARED_TENANT,
    Description,
    Location,
    ModelFilter,
    ModelKind,
    ModelRecord,
    ModelState,
    UploadSession,
    UploadSpec,
    UploadState,
    import_key_allowed,
    object_key,
    staging_key,
)
from services.model.repository import ModelRepository, NameTaken
from services.model.safetensors_header import (
    Limits,
    SafetensorsHeader,
    StreamValidator,
    ValidatedFile,
    incomplete,
    too_large,
)
from services.model.storage import ModelStorage, StoredPart

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15.0
IN_PLACE = "in_place_import"
URL_CHUNK_BYTES = 1 << 20
# A file whose keys say it is one of these kinds may not be stored as another of them (a LoRA uploaded as a
# checkpoint would only fail later, on an executor, with a less helpful error).
_CONFIDENT_KINDS = {"lora": ModelKind.LORA, "vae": ModelKind.VAE, "controlnet": ModelKind.CONTROLNET}
_MODEL_KINDS = {ModelKind.CHECKPOINT, ModelKind.DIFFUSION_MODEL, ModelKind.LORA, ModelKind.VAE,
                ModelKind.CONTROLNET}


class ReferenceChecker(Protocol):
    async def active_referencing(self, tenant: str, values: list[str], limit: int = 20) -> list[str]:
        """Ids of the tenant's queued or running executions that use one of these names."""
        ...


@dataclass(frozen=True)
class ModelConfig:
    limits: Limits
    upload_ttl_seconds: int = 24 * 3600
    part_bytes: int = 512 << 20
    download_ttl_seconds: int = 3600
    import_timeout_seconds: float = 3600.0
    allow_private_urls: bool = False
    pending_stale_seconds: float = 600.0


@dataclass(frozen=True)
class PartUrl:
    number: int
    offset: int
    size: int
    url: str
    uploaded: bool


@dataclass(frozen=True)
class UploadTicket:
    """A presigned upload as the caller sees it: the session and fresh URLs."""

    session: UploadSession
    upload_url: str
    parts: list[PartUrl]
    url_expire_time: datetime


class ModelService:
    def __init__(self, repository: ModelRepository, storage: ModelStorage | None, config: ModelConfig, *,
                 references: ReferenceChecker, locations: CopySource | None = None,
                 http_client: Callable[[], httpx.AsyncClient] | None = None) -> None:
        self.repository, self._storage, self.config = repository, storage, config
        self._references = references
        self._locations = locations
        self._http_client = http_client or (lambda: httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, read=120.0), trust_env=False))

    @property
    def storage(self) -> ModelStorage:
        """The models bucket; UNAVAILABLE in a deployment without an object store (reads of the catalog still
        work)."""
        if self._storage is None:
            raise unavailable("no object store is configured (COMFYMESH_S3_ENDPOINT): model files cannot be stored "
                              "or served", retry_after_seconds=None)
        return self._storage

    # -- upload and import -------------------------------------------------------------------------------------

    async def upload(self, tenant: str, spec: UploadSpec, chunks: AsyncIterator[bytes]) -> ModelRecord:
        """The gRPC client-stream upload."""
        return await self._ingest(tenant, spec, chunks)

    async def import_object(self, tenant: str, spec: UploadSpec, key: str) -> ModelRecord:
        if not import_key_allowed(tenant, key):
            raise invalid_argument(f"object_key {key!r} cannot be imported: only unregistered files under "
                                   f"imports/{tenant}/ or in this tenant's own model folders can",
                                   FieldViolation("object_key", "not importable by this caller", "KEY_NOT_ALLOWED"))
        registered = await self.repository.find_by_key(self.storage.bucket, key)
        if registered is not None:
            if registered.tenant == tenant and registered.kind == spec.kind and registered.name == spec.name \
                    and registered.state == ModelState.READY:
                return registered
            raise already_exists(f"object_key {key!r} is already the storage of a model", Reason.ALREADY_EXISTS,
                                 object_key=key)
        info = await self.storage.stat(key)
        if info is None:
            raise not_found(f"no object {key!r} in the models bucket", object_key=key)
        if info.size > self.config.limits.max_bytes:
            raise too_large(info.size, self.config.limits.max_bytes, "the object has")
        return await self._ingest(tenant, spec, self.storage.read(key), source_key=key)

    async def import_url(self, tenant: str, spec: UploadSpec, url: str) -> ModelRecord:
        url_guard.parse_url(url)  # a malformed or non-http(s) URL is refused before anything is reserved
        try:
            async with asyncio.timeout(self.config.import_timeout_seconds):
                return await self._ingest(tenant, spec, self._fetch(url))
        except TimeoutError:
            raise url_guard.fetch_failed(f"fetching {url_guard.redact_url(url)} took more than "
                                         f"{self.config.import_timeout_seconds:g}s", retryable=True, url=url) from None

    async def _fetch(self, url: str) -> AsyncIterator[bytes]:
        limit = self.config.limits.max_bytes
        async with self._http_client() as client:
            try:
                async with url_guard.open_checked(client, url, allow_private=self.config.allow_private_urls,
                                                  headers={"Accept-Encoding": "identity"}) as response:
                    if response.status_code != 200:
                        raise url_guard.fetch_failed(
                            f"{url_guard.redact_url(url)} answered HTTP {response.status_code}",
                            retryable=response.status_code >= 500 or response.status_code == 429, url=url,
                            status=str(response.status_code))
                    length = response.headers.get("content-length", "")
                    if length.isdigit() and int(length) > limit:
                        raise too_large(int(length), limit, "the URL's content is")
                    async for chunk in response.aiter_raw(URL_CHUNK_BYTES):
                        yield chunk
            except httpx.TimeoutException as exc:
                raise url_guard.fetch_failed(f"timed out reading {url_guard.redact_url(url)}: "
                                             f"{type(exc).__name__}", retryable=True, url=url) from exc
            except httpx.HTTPError as exc:
                raise url_guard.fetch_failed(f"reading {url_guard.redact_url(url)} failed: {type(exc).__name__}: "
                                             f"{exc}", retryable=True, url=url) from exc

    async def _ingest(self, tenant: str, spec: UploadSpec, chunks: AsyncIterator[bytes], *,
                      source_key: str | None = None) -> ModelRecord:
        if spec.request_id:
            previous = await self.repository.get_by_request_id(tenant, spec.request_id)
            if previous is not None:
                return previous
        if spec.sha256:
            same = await self.repository.find_by_sha256(tenant, spec.kind, spec.sha256)
            if same is not None:
                return same
        now = datetime.now(UTC)
        key = object_key(tenant, spec.kind, spec.name)
        in_place = source_key == key
        record = ModelRecord(id=time_ordered_id(), tenant=tenant, name=spec.name, kind=spec.kind,
                             state=ModelState.PENDING, bucket=self.storage.bucket, object_key=key, create_time=now,
                             update_time=now, request_id=spec.request_id,
                             # the janitor must not delete an operator's file whose in-place import was abandoned
                             description=Description(properties={IN_PLACE: True}) if in_place else Description())
        try:
            await self.repository.reserve(record, stale_before=now - timedelta(
                seconds=self.config.pending_stale_seconds))
        except NameTaken as taken:
            detail = "is being uploaded" if taken.holder.state == ModelState.PENDING else "exists"
            raise already_exists(f"a {spec.kind.folder} model named {spec.name} {detail}; delete it first or "
                                 "choose another name", Reason.ALREADY_EXISTS, name=spec.name,
                                 kind=str(spec.kind)) from None
        written = False
        lost = False
        try:
            validator = StreamValidator(self.config.limits, declared_size=spec.size_bytes,
                                        expected_sha256=spec.sha256,
                                        on_header=lambda header: self._on_header(spec.kind, header))
            beat = _Heartbeat(lambda: self.repository.touch(record.id))
            if in_place:
                async for chunk in chunks:
                    validator.feed(chunk)
                    await beat.maybe()
                validated = validator.finish()
            else:
                box: list[ValidatedFile] = []
                written = True
                await self.storage.write(record.object_key, _heartbeating(chunks, beat), inspect=validator.feed,
                                         at_end=lambda: box.append(validator.finish()))
                validated = box[0]
            description = describe(spec.kind, validated.header, validated.probes)
            duplicate = await self.repository.find_by_sha256(tenant, spec.kind, validated.sha256,
                                                             exclude_id=record.id)
            if duplicate is not None:
                await self._discard(record, delete_object=written)
                return duplicate
            await self.storage.write_sidecar(record.object_key, validated.sha256)
            if not await self.repository.mark_ready(record.id, size_bytes=validated.size_bytes,
                                                    sha256=validated.sha256, description=description):
                lost = True
                raise _lost_reservation(spec.name)
        except BaseException as exc:
            if isinstance(exc, ServiceError) and exc.metadata.get("problem") == "RESERVATION_LOST":
                lost = True
            if not lost:  # a reservation that was taken over is another upload's object now: leave it
                await _quietly(self._discard(record, delete_object=written))
            raise
        stored = await self.repository.get(tenant, record.id)
        return stored or replace(record, state=ModelState.READY, size_bytes=validated.size_bytes,
                                 sha256=validated.sha256, description=description)

    def _on_header(self, kind: ModelKind, header: SafetensorsHeader) -> list[str]:
        """Runs as soon as the header arrived: refuses a file of another kind, names the tensors to capture."""
        found = content_kind(header.shapes())
        confident = _CONFIDENT_KINDS.get(found)
        if kind in _MODEL_KINDS and ((confident is not None and confident != kind) or
                                     (kind == ModelKind.LORA and found != "lora")):
            described = found.replace("_", " ") if found != "unknown" else "not a LoRA"
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.MODEL_FILE_INVALID,
                               f"the file is a {described} by its keys, not a {kind.folder} model; upload it with "
                               f"the matching kind", {"problem": "KIND_MISMATCH", "detected_kind": found},
                               (FieldViolation("kind", f"the file is a {described}", "KIND_MISMATCH"),))
        return sd2_probe_keys(header) if kind in (ModelKind.CHECKPOINT, ModelKind.DIFFUSION_MODEL) else []

    async def _discard(self, record: ModelRecord, *, delete_object: bool) -> None:
        if delete_object:
            await self.storage.delete_model_objects(record.object_key)
        await self.repository.drop_pending(record.id)

    # -- presigned uploads -------------------------------------------------------------------------------------

    async def create_upload(self, tenant: str, spec: UploadSpec) -> UploadTicket:
        if spec.request_id:
            existing = await self.repository.get_upload_by_request_id(tenant, spec.request_id)
            if existing is not None:
                return await self._ticket(existing)
        if spec.size_bytes > self.config.limits.max_bytes:
            raise too_large(spec.size_bytes, self.config.limits.max_bytes, "the declared size is")
        taken = await self.repository.find_by_name(tenant, spec.kind, spec.name)
        if taken is not None and not (spec.sha256 and taken.sha256 == spec.sha256):
            raise already_exists(f"a {spec.kind.folder} model named {spec.name} exists; delete it first or choose "
                                 "another name", Reason.ALREADY_EXISTS, name=spec.name, kind=str(spec.kind))
        now = datetime.now(UTC)
        upload_id = time_ordered_id()
        key = staging_key(tenant, upload_id)
        multipart = spec.size_bytes > self.config.part_bytes
        session = UploadSession(id=upload_id, tenant=tenant, name=spec.name, kind=spec.kind,
                                state=UploadState.OPEN, staging_key=key, create_time=now, update_time=now,
                                expire_time=now + timedelta(seconds=self.config.upload_ttl_seconds),
                                size_bytes=spec.size_bytes, sha256=spec.sha256, request_id=spec.request_id,
                                multipart_id=await self.storage.create_multipart(key) if multipart else "",
                                part_size_bytes=self.config.part_bytes if multipart else 0)
        try:
            await self.repository.add_upload(session)
        except ServiceError:
            if session.multipart_id:
                await _quietly(self.storage.abort_multipart(key, session.multipart_id))
            raise
        return await self._ticket(session)

    async def get_upload(self, tenant: str, upload_id: str) -> UploadTicket:
        return await self._ticket(await self._session(tenant, upload_id), with_parts=True)

    async def delete_upload(self, tenant: str, upload_id: str) -> None:
        session = await self._session(tenant, upload_id)
        await self._remove_upload(session)

    async def _remove_upload(self, session: UploadSession) -> None:
        if session.multipart_id:
            await self.storage.abort_multipart(session.staging_key, session.multipart_id)
        await self.storage.delete(session.staging_key)
        await self.repository.delete_upload(session.id)

    async def _session(self, tenant: str, upload_id: str) -> UploadSession:
        session = await self.repository.get_upload(tenant, upload_id)
        if session is None:
            raise not_found(f"no model upload {upload_id}", upload_id=upload_id)
        return session

    async def _ticket(self, session: UploadSession, *, with_parts: bool = False) -> UploadTicket:
        now = datetime.now(UTC)
        ttl = max(1, int((session.expire_time - now).total_seconds()))
        if session.state == UploadState.COMPLETED or session.expire_time <= now:
            return UploadTicket(session, "", [], session.expire_time)
        if not session.multipart_id:
            url = await self.storage.presigned_put(session.staging_key, ttl)
            return UploadTicket(session, url, [], session.expire_time)
        stored = await self.storage.list_parts(session.staging_key, session.multipart_id) if with_parts else {}
        parts = []
        for number, offset, length in session.part_ranges():
            done = number in stored and stored[number].size == length
            url = await self.storage.presigned_part(session.staging_key, session.multipart_id, number, ttl)
            parts.append(PartUrl(number, offset, length, url, done))
        return UploadTicket(session, "", parts, session.expire_time)

    async def complete_upload(self, tenant: str, upload_id: str) -> ModelRecord:
        session = await self._session(tenant, upload_id)
        if session.state == UploadState.COMPLETED and session.model_id:
            model = await self.repository.get(tenant, session.model_id)
            if model is None:
                raise not_found(f"the model upload {upload_id} completed, but its model was deleted since",
                                Reason.MODEL_NOT_FOUND, upload_id=upload_id)
            return model
        if session.expire_time <= datetime.now(UTC):
            raise failed_precondition(f"the model upload {upload_id} expired; start a new one",
                                      Reason.UPLOAD_INCOMPLETE, upload_id=upload_id)
        if session.multipart_id:
            await self._assemble(session)
        info = await self.storage.stat(session.staging_key)
        if info is None:
            raise incomplete(f"nothing was uploaded for {upload_id} yet: PUT the file to its upload_url first",
                             upload_id=upload_id)
        if info.size > self.config.limits.max_bytes:
            await _quietly(self.storage.delete(session.staging_key))
            raise too_large(info.size, self.config.limits.max_bytes, "the uploaded file has")
        if session.size_bytes and info.size != session.size_bytes:
            raise incomplete(f"the uploaded file has {info.size} bytes, not the declared {session.size_bytes}; "
                             "PUT it again", declared_bytes=str(session.size_bytes), received_bytes=str(info.size))
        spec = UploadSpec(session.name, session.kind, session.size_bytes or info.size, session.sha256,
                          f"upload:{session.id}")
        try:
            model = await self._ingest(tenant, spec, self.storage.read(session.staging_key))
        except ServiceError as exc:
            if exc.reason not in (Reason.UPLOAD_INCOMPLETE, Reason.BACKEND_UNAVAILABLE, Reason.ALREADY_EXISTS,
                                  Reason.URL_FETCH_FAILED):
                await _quietly(self.storage.delete(session.staging_key))  # refused bytes are not kept
            raise
        await self.repository.complete_upload(session.id, model.id)
        await _quietly(self.storage.delete(session.staging_key))
        return model

    async def _assemble(self, session: UploadSession) -> None:
        """Completes the S3 multipart upload once every part is stored with its expected size."""
        stored = await self.storage.list_parts(session.staging_key, session.multipart_id)
        expected = session.part_ranges()
        missing = [n for n, _offset, length in expected if n not in stored or stored[n].size != length]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise incomplete(f"parts {shown} of {len(expected)} are missing or have the wrong size: PUT them and "
                             "complete again", missing_parts=shown)
        extra = [n for n in stored if n > len(expected)]
        if extra:
            raise incomplete(f"parts {extra[:20]} are beyond the declared size", extra_parts=str(extra[:20]))
        await self.storage.complete_multipart(session.staging_key, session.multipart_id,
                                              [StoredPart(n, stored[n].size, stored[n].etag) for n, _o, _l in expected])
        await self.repository.set_upload_assembled(session.id)

    # -- reads and deletes -------------------------------------------------------------------------------------

    async def get(self, tenant: str, model_id: str) -> ModelRecord:
        record = await self.repository.get(tenant, model_id)
        if record is None:
            raise not_found(f"no model {model_id}", Reason.MODEL_NOT_FOUND, model_id=model_id)
        return record

    async def list(self, tenant: str, flt: ModelFilter, *, after: tuple[str, str] | None, limit: int
                   ) -> tuple[list[ModelRecord], tuple[str, str] | None]:
        return await self.repository.list(tenant, flt, after=after, limit=limit)

    async def locations(self, records: builtins.list[ModelRecord]) -> dict[str, builtins.list[Location]]:
        if self._locations is None or not records:
            return {}
        copies = await self._locations.copies()
        return {r.id: locate(r, copies) for r in records}

    async def delete(self, tenant: str, model_id: str) -> None:
        record = await self.get(tenant, model_id)
        if record.tenant == SHARED_TENANT and tenant != SHARED_TENANT:
            raise permission_denied(f"model {model_id} is shared with every tenant and managed by operators",
                                    model_id=model_id)
        users = await self._references.active_referencing(tenant, sorted({record.name, record.executor_name}))
        if users:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, Reason.MODEL_IN_USE,
                               f"model {record.name} is used by {len(users)} queued or running execution(s), e.g. "
                               f"{users[0]}; delete it when they are done (or cancel them)",
                               {"model_id": model_id, "executions": ",".join(users[:10])})
        if await self.repository.delete(tenant, model_id) is None:
            raise not_found(f"no model {model_id}", Reason.MODEL_NOT_FOUND, model_id=model_id)
        await self.storage.delete_model_objects(record.object_key)

    async def download_url(self, tenant: str, model_id: str) -> tuple[str, datetime]:
        record = await self.get(tenant, model_id)
        ttl = self.config.download_ttl_seconds
        return await self.storage.presigned_get(record.object_key, ttl), datetime.now(UTC) + timedelta(seconds=ttl)

    # -- housekeeping ------------------------------------------------------------------------------------------

    async def sweep(self) -> tuple[int, int]:
        """Removes expired presigned uploads and abandoned upload reservations: (uploads, reservations)."""
        now = datetime.now(UTC)
        uploads = 0
        for session in await self.repository.expired_uploads(now):
            await self._remove_upload(session)
            uploads += 1
        reservations = 0
        stale = now - timedelta(seconds=self.config.pending_stale_seconds)
        for record in await self.repository.stale_pending(updated_before=stale):
            # The row still reserves the key: an object there is this abandoned upload's (never validated), unless
            # it was an in-place import of a file that was there before.
            if not record.description.properties.get(IN_PLACE):
                await self.storage.delete_model_objects(record.object_key)
            if await self.repository.drop_pending(record.id, updated_before=stale):
                reservations += 1
        return uploads, reservations


class _Heartbeat:
    """Keeps an upload's reservation alive while its bytes stream; a lost reservation stops the upload."""

    def __init__(self, touch: Callable[[], Awaitable[bool]]) -> None:
        self._touch = touch
        self._last = time.monotonic()

    async def maybe(self, *, force: bool = False) -> None:
        if force or time.monotonic() - self._last >= HEARTBEAT_SECONDS:
            self._last = time.monotonic()
            if not await self._touch():
                raise _lost_reservation("")


def _lost_reservation(name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, Reason.ALREADY_EXISTS,
                        f"the upload of {name or 'this model'} stalled and another upload took its name over",
                        {"problem": "RESERVATION_LOST"})


async def _heartbeating(chunks: AsyncIterator[bytes], beat: _Heartbeat) -> AsyncIterator[bytes]:
    """The chunks, keeping the reservation alive; it is checked once more before the end is passed on."""
    async for chunk in chunks:
        await beat.maybe()
        yield chunk
    await beat.maybe(force=True)


async def _quietly(action: Awaitable[None]) -> None:
    """Best-effort cleanup after a failure: its own failure is logged, never raised over the first one."""
    try:
        await action
    except Exception:
        log.warning("model cleanup failed", exc_info=True)

