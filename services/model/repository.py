"""Models and presigned uploads in SQL (SQLite or PostgreSQL through the same code).

A model row is written PENDING before its bytes stream in: the unique (tenant, kind, name) makes that row the
reservation of the name (two concurrent uploads of one name can never write the same object), and the row turns
READY, with its metadata, only once the file validated and is stored. Reads see READY rows only. A PENDING row
whose upload stopped making progress (`update_time` older than the stale limit) may be taken over.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, Text, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from service_runtime.db import Base, Database, UtcDateTime
from service_runtime.errors import Reason, already_exists
from services.model.domain import (
    SHARED_TENANT,
    Architecture,
    Description,
    ModelFilter,
    ModelKind,
    ModelRecord,
    ModelState,
    UploadSession,
    UploadState,
)


class ModelRow(Base):
    """Mirrors migration 0002_models (table models)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    architecture: Mapped[str] = mapped_column(String(32))
    supported: Mapped[bool] = mapped_column(Boolean)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    parameter_count: Mapped[int] = mapped_column(BigInteger)
    dtypes_json: Mapped[str] = mapped_column(Text)
    lora_rank: Mapped[int] = mapped_column(Integer)
    file_metadata_json: Mapped[str] = mapped_column(Text)
    properties_json: Mapped[str] = mapped_column(Text)
    bucket: Mapped[str] = mapped_column(String(255))
    object_key: Mapped[str] = mapped_column(String(1024))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)
    update_time = mapped_column(UtcDateTime, nullable=False)


class UploadRow(Base):
    """Mirrors migration 0002_models (table model_uploads)."""

    __tablename__ = "model_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    staging_key: Mapped[str] = mapped_column(String(1024))
    multipart_id: Mapped[str] = mapped_column(String(1024))
    part_size_bytes: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)
    update_time = mapped_column(UtcDateTime, nullable=False)
    expire_time = mapped_column(UtcDateTime, nullable=False)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _model_row(record: ModelRecord) -> ModelRow:
    d = record.description
    return ModelRow(id=record.id, tenant=record.tenant, name=record.name, kind=str(record.kind),
                    state=str(record.state), architecture=str(d.architecture), supported=d.supported,
                    size_bytes=record.size_bytes, sha256=record.sha256, parameter_count=d.parameter_count,
                    dtypes_json=_dumps(list(d.dtypes)), lora_rank=d.lora_rank,
                    file_metadata_json=_dumps(d.file_metadata), properties_json=_dumps(d.properties),
                    bucket=record.bucket, object_key=record.object_key, request_id=record.request_id,
                    create_time=record.create_time, update_time=record.update_time)


def _model_record(row: ModelRow) -> ModelRecord:
    description = Description(architecture=Architecture(row.architecture), supported=row.supported,
                              parameter_count=row.parameter_count, dtypes=tuple(json.loads(row.dtypes_json)),
                              lora_rank=row.lora_rank, file_metadata=json.loads(row.file_metadata_json),
                              properties=json.loads(row.properties_json))
    return ModelRecord(id=row.id, tenant=row.tenant, name=row.name, kind=ModelKind(row.kind),
                       state=ModelState(row.state), bucket=row.bucket, object_key=row.object_key,
                       create_time=row.create_time, update_time=row.update_time, size_bytes=row.size_bytes,
                       sha256=row.sha256, description=description, request_id=row.request_id)


def _upload_record(row: UploadRow) -> UploadSession:
    values = {c.key: getattr(row, c.key) for c in UploadRow.__table__.columns}
    values["kind"] = ModelKind(values["kind"])
    values["state"] = UploadState(values["state"])
    return UploadSession(**values)


class NameTaken(Exception):  # noqa: N818 - a signal, not an error the caller sees
    """The (tenant, kind, name) is held by another row (READY, or PENDING and still making progress)."""

    def __init__(self, holder: ModelRecord) -> None:
        super().__init__(holder.name)
        self.holder = holder


class ModelRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- models: the ingest path ---------------------------------------------------------------------------------

    async def reserve(self, record: ModelRecord, *, stale_before: datetime) -> None:
        """Inserts `record` as PENDING. Raises NameTaken when another row holds the name (a stale PENDING row is
        taken over), ALREADY_EXISTS when (tenant, request_id) is taken."""
        for _ in range(3):
            holder = await self.find_by_name(record.tenant, record.kind, record.name, any_state=True)
            if holder is not None:
                if holder.state == ModelState.READY or holder.update_time >= stale_before:
                    raise NameTaken(holder)
                await self.drop_pending(holder.id, updated_before=stale_before)
            try:
                async with self._db.session() as session:
                    session.add(_model_row(record))
                return
            except IntegrityError:
                if record.request_id and await self.get_by_request_id(record.tenant, record.request_id,
                                                                     any_state=True) is not None:
                    raise already_exists("an upload with this request_id exists", Reason.ALREADY_EXISTS,
                                         request_id=record.request_id) from None
        raise already_exists(f"the model name {record.name} is being taken by another upload",
                             Reason.ALREADY_EXISTS, name=record.name)

    async def touch(self, model_id: str) -> bool:
        """Marks a PENDING upload as making progress; False when it lost its reservation."""
        async with self._db.session() as session:
            result = await session.execute(update(ModelRow).where(
                ModelRow.id == model_id, ModelRow.state == str(ModelState.PENDING)).values(
                update_time=datetime.now(UTC)))
            return bool(getattr(result, "rowcount", 0) == 1)

    async def mark_ready(self, model_id: str, *, size_bytes: int, sha256: str, description: Description) -> bool:
        """PENDING → READY with the file's metadata; False when the reservation was taken over meanwhile."""
        now = datetime.now(UTC)
        d = description
        async with self._db.session() as session:
            result = await session.execute(update(ModelRow).where(
                ModelRow.id == model_id, ModelRow.state == str(ModelState.PENDING)).values(
                state=str(ModelState.READY), size_bytes=size_bytes, sha256=sha256,
                architecture=str(d.architecture), supported=d.supported, parameter_count=d.parameter_count,
                dtypes_json=_dumps(list(d.dtypes)), lora_rank=d.lora_rank,
                file_metadata_json=_dumps(d.file_metadata), properties_json=_dumps(d.properties),
                create_time=now, update_time=now))
            return bool(getattr(result, "rowcount", 0) == 1)

    async def drop_pending(self, model_id: str, *, updated_before: datetime | None = None) -> bool:
        conditions = [ModelRow.id == model_id, ModelRow.state == str(ModelState.PENDING)]
        if updated_before is not None:
            conditions.append(ModelRow.update_time < updated_before)
        async with self._db.session() as session:
            result = await session.execute(delete(ModelRow).where(*conditions))
            return bool(getattr(result, "rowcount", 0) == 1)

    async def stale_pending(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[ModelRecord]:
        async with self._db.session() as session:
            rows = (await session.execute(select(ModelRow).where(
                ModelRow.state == str(ModelState.PENDING), ModelRow.update_time < updated_before)
                .order_by(ModelRow.update_time).limit(limit))).scalars().all()
            return [_model_record(r) for r in rows]

    # -- models: reads -------------------------------------------------------------------------------------------

    async def get(self, tenant: str, model_id: str) -> ModelRecord | None:
        """A READY model the tenant sees (its own or a shared one)."""
        async with self._db.session() as session:
            row = await session.get(ModelRow, model_id)
            if row is None or row.state != ModelState.READY or row.tenant not in (tenant, SHARED_TENANT):
                return None
            return _model_record(row)

    async def get_by_request_id(self, tenant: str, request_id: str, *, any_state: bool = False
                                ) -> ModelRecord | None:
        async with self._db.session() as session:
            row = (await session.execute(select(ModelRow).where(
                ModelRow.tenant == tenant, ModelRow.request_id == request_id))).scalar_one_or_none()
            if row is None or (not any_state and row.state != ModelState.READY):
                return None
            return _model_record(row)

    async def find_by_name(self, tenant: str, kind: ModelKind, name: str, *, any_state: bool = False
                           ) -> ModelRecord | None:
        async with self._db.session() as session:
            row = (await session.execute(select(ModelRow).where(
                ModelRow.tenant == tenant, ModelRow.kind == str(kind), ModelRow.name == name))).scalar_one_or_none()
            if row is None or (not any_state and row.state != ModelState.READY):
                return None
            return _model_record(row)

    async def find_by_sha256(self, tenant: str, kind: ModelKind, sha256: str, *, exclude_id: str = ""
                             ) -> ModelRecord | None:
        """A READY model of the tenant with these exact bytes in this folder (deduplication)."""
        async with self._db.session() as session:
            row = (await session.execute(select(ModelRow).where(
                ModelRow.tenant == tenant, ModelRow.kind == str(kind), ModelRow.sha256 == sha256,
                ModelRow.state == str(ModelState.READY), ModelRow.id != exclude_id)
                .order_by(ModelRow.create_time).limit(1))).scalar_one_or_none()
            return _model_record(row) if row is not None else None

    async def find_by_key(self, bucket: str, key: str) -> ModelRecord | None:
        """The model (any tenant, any state) stored at this object key."""
        async with self._db.session() as session:
            row = (await session.execute(select(ModelRow).where(
                ModelRow.bucket == bucket, ModelRow.object_key == key).limit(1))).scalar_one_or_none()
            return _model_record(row) if row is not None else None

    async def list(self, tenant: str, flt: ModelFilter, *, after: tuple[str, str] | None, limit: int
                   ) -> tuple[builtins.list[ModelRecord], tuple[str, str] | None]:
        """READY models the tenant sees, by name (then id). Returns the page and the (name, id) cursor of the next
        one (None at the end)."""
        conditions = [ModelRow.tenant.in_([tenant, SHARED_TENANT]), ModelRow.state == str(ModelState.READY)]
        if flt.kind is not None:
            conditions.append(ModelRow.kind == str(flt.kind))
        if flt.architecture is not None:
            conditions.append(ModelRow.architecture == str(flt.architecture))
        if flt.name_contains:
            conditions.append(func.lower(ModelRow.name).contains(flt.name_contains.lower(), autoescape=True))
        if after is not None:
            conditions.append(or_(ModelRow.name > after[0], and_(ModelRow.name == after[0], ModelRow.id > after[1])))
        async with self._db.session() as session:
            rows = (await session.execute(select(ModelRow).where(*conditions)
                                          .order_by(ModelRow.name, ModelRow.id).limit(limit + 1))).scalars().all()
        page = [_model_record(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, ((page[-1].name, page[-1].id) if more and page else None)

    async def delete(self, tenant: str, model_id: str) -> ModelRecord | None:
        """Deletes the tenant's own READY model; None when it has none by that id."""
        async with self._db.session() as session:
            row = await session.get(ModelRow, model_id)
            if row is None or row.tenant != tenant or row.state != ModelState.READY:
                return None
            record = _model_record(row)
            await session.delete(row)
            return record

    # -- presigned uploads ---------------------------------------------------------------------------------------

    async def add_upload(self, upload: UploadSession) -> None:
        try:
            async with self._db.session() as session:
                session.add(UploadRow(**{k: str(v) if k in ("kind", "state") else v
                                         for k, v in asdict(upload).items()}))
        except IntegrityError as exc:
            raise already_exists("an upload with this request_id exists", Reason.ALREADY_EXISTS,
                                 request_id=upload.request_id or "") from exc

    async def get_upload(self, tenant: str, upload_id: str) -> UploadSession | None:
        async with self._db.session() as session:
            row = await session.get(UploadRow, upload_id)
            return _upload_record(row) if row is not None and row.tenant == tenant else None

    async def get_upload_by_request_id(self, tenant: str, request_id: str) -> UploadSession | None:
        async with self._db.session() as session:
            row = (await session.execute(select(UploadRow).where(
                UploadRow.tenant == tenant, UploadRow.request_id == request_id))).scalar_one_or_none()
            return _upload_record(row) if row is not None else None

    async def complete_upload(self, upload_id: str, model_id: str) -> None:
        async with self._db.session() as session:
            await session.execute(update(UploadRow).where(UploadRow.id == upload_id).values(
                state=str(UploadState.COMPLETED), model_id=model_id, update_time=datetime.now(UTC)))

    async def set_upload_assembled(self, upload_id: str) -> None:
        """The multipart upload was completed into the staging object (which a new PUT may replace from now on)."""
        async with self._db.session() as session:
            await session.execute(update(UploadRow).where(UploadRow.id == upload_id).values(
                multipart_id="", update_time=datetime.now(UTC)))

    async def delete_upload(self, upload_id: str) -> None:
        async with self._db.session() as session:
            await session.execute(delete(UploadRow).where(UploadRow.id == upload_id))

    async def expired_uploads(self, now: datetime, limit: int = 100) -> builtins.list[UploadSession]:
        async with self._db.session() as session:
            rows = (await session.execute(select(UploadRow).where(UploadRow.expire_time < now)
                                          .order_by(UploadRow.expire_time).limit(limit))).scalars().all()
            return [_upload_record(r) for r in rows]
