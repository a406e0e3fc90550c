"""The models and model_uploads tables on SQLite and PostgreSQL: name reservations, READY-only reads, tenant
visibility, keyset pagination and filters, uploads; and the execution store's in-use query DeleteModel relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service_runtime.db import Database
from service_runtime.errors import ServiceError
from service_runtime.ids import time_ordered_id
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.repository import ExecutionRepository
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
    object_key,
)
from services.model.repository import ModelRepository, NameTaken

pytestmark = pytest.mark.integration


def _record(name: str, *, tenant: str = "default", kind: ModelKind = ModelKind.CHECKPOINT,
            request_id: str | None = None, age: float = 0.0) -> ModelRecord:
    when = datetime.now(UTC) - timedelta(seconds=age)
    return ModelRecord(id=time_ordered_id(), tenant=tenant, name=name, kind=kind, state=ModelState.PENDING,
                       bucket="b", object_key=object_key(tenant, kind, name), create_time=when, update_time=when,
                       request_id=request_id)


async def _ready(repo: ModelRepository, record: ModelRecord, sha: str = "a" * 64,
                 architecture: Architecture = Architecture.SD1) -> ModelRecord:
    await repo.reserve(record, stale_before=datetime.now(UTC) - timedelta(minutes=10))
    description = Description(architecture=architecture, supported=True, parameter_count=7, dtypes=("F16",),
                              lora_rank=0, file_metadata={"k": "v"}, properties={"family": "sd1", "n": [1, 2]})
    assert await repo.mark_ready(record.id, size_bytes=123, sha256=sha, description=description)
    found = await repo.get(record.tenant, record.id)
    assert found is not None
    return found


async def test_a_reservation_holds_the_name_until_ready_and_reads_see_ready_rows_only(database: Database) -> None:
    repo = ModelRepository(database)
    first = _record("a.safetensors")
    await repo.reserve(first, stale_before=datetime.now(UTC) - timedelta(minutes=10))
    assert await repo.get("default", first.id) is None  # PENDING is invisible
    with pytest.raises(NameTaken):
        await repo.reserve(_record("a.safetensors"), stale_before=datetime.now(UTC) - timedelta(minutes=10))
    # Another kind (folder) or tenant may use the name.
    await repo.reserve(_record("a.safetensors", kind=ModelKind.LORA), stale_before=datetime.now(UTC))
    await repo.reserve(_record("a.safetensors", tenant="acme"), stale_before=datetime.now(UTC))
    description = Description(architecture=Architecture.SDXL, supported=True, parameter_count=10,
                              dtypes=("BF16", "F32"), lora_rank=4, file_metadata={"ss": "x"},
                              properties={"prediction": "eps", "unet": {"context_dim": 2048}})
    assert await repo.mark_ready(first.id, size_bytes=99, sha256="b" * 64, description=description)
    assert not await repo.mark_ready(first.id, size_bytes=99, sha256="b" * 64, description=description)
    found = await repo.get("default", first.id)
    assert found is not None
    assert (found.state, found.size_bytes, found.sha256, found.description) == (ModelState.READY, 99, "b" * 64,
                                                                               description)
    with pytest.raises(NameTaken) as info:
        await repo.reserve(_record("a.safetensors"), stale_before=datetime.now(UTC))
    assert info.value.holder.id == first.id


async def test_a_stale_reservation_is_taken_over(database: Database) -> None:
    repo = ModelRepository(database)
    stale = _record("s.safetensors", age=3600)
    await repo.reserve(stale, stale_before=datetime.now(UTC) - timedelta(hours=2))
    assert [r.id for r in await repo.stale_pending(updated_before=datetime.now(UTC) - timedelta(minutes=1))] == [
        stale.id]
    fresh = _record("s.safetensors")
    await repo.reserve(fresh, stale_before=datetime.now(UTC) - timedelta(minutes=1))
    assert not await repo.touch(stale.id)  # the stalled upload learns it lost its name
    assert await repo.touch(fresh.id)


async def test_request_ids_are_unique_per_tenant(database: Database) -> None:
    repo = ModelRepository(database)
    await _ready(repo, _record("r.safetensors", request_id="req-1"))
    found = await repo.get_by_request_id("default", "req-1")
    assert found is not None and found.name == "r.safetensors"
    with pytest.raises(ServiceError):
        await repo.reserve(_record("other.safetensors", request_id="req-1"), stale_before=datetime.now(UTC))
    await repo.reserve(_record("other.safetensors", tenant="acme", request_id="req-1"), stale_before=datetime.now(UTC))


async def test_list_pages_filters_and_tenant_visibility(database: Database) -> None:
    repo = ModelRepository(database)
    names = ["b.safetensors", "a_1.safetensors", "c%.safetensors", "A2.safetensors", "d.safetensors"]
    for i, name in enumerate(names):
        await _ready(repo, _record(name), sha=f"{i:064d}",
                     architecture=Architecture.SDXL if i % 2 else Architecture.SD1)
    await _ready(repo, _record("lora.safetensors", kind=ModelKind.LORA), sha="f" * 64)
    await _ready(repo, _record("shared.safetensors", tenant=SHARED_TENANT), sha="e" * 64)
    await _ready(repo, _record("secret.safetensors", tenant="acme"), sha="d" * 64)
    seen: list[str] = []
    after = None
    while True:
        page, after = await repo.list("default", ModelFilter(), after=after, limit=3)
        seen += [r.name for r in page]
        if after is None:
            break
    assert seen == sorted([*names, "lora.safetensors", "shared.safetensors"])
    checkpoints, _ = await repo.list("default", ModelFilter(kind=ModelKind.CHECKPOINT), after=None, limit=100)
    assert "lora.safetensors" not in [r.name for r in checkpoints]
    sdxl, _ = await repo.list("default", ModelFilter(architecture=Architecture.SDXL), after=None, limit=100)
    assert sorted(r.name for r in sdxl) == sorted([names[1], names[3]])
    like, _ = await repo.list("default", ModelFilter(name_contains="_1"), after=None, limit=100)
    assert [r.name for r in like] == ["a_1.safetensors"]  # "_" is literal, not a wildcard
    percent, _ = await repo.list("default", ModelFilter(name_contains="C%"), after=None, limit=100)
    assert [r.name for r in percent] == ["c%.safetensors"]  # case-insensitive, "%" literal
    acme, _ = await repo.list("acme", ModelFilter(), after=None, limit=100)
    assert sorted(r.name for r in acme) == ["secret.safetensors", "shared.safetensors"]


async def test_dedup_lookup_delete_and_keys(database: Database) -> None:
    repo = ModelRepository(database)
    kept = await _ready(repo, _record("one.safetensors"), sha="9" * 64)
    assert (await repo.find_by_sha256("default", ModelKind.CHECKPOINT, "9" * 64)).id == kept.id  # type: ignore[union-attr]
    assert await repo.find_by_sha256("default", ModelKind.CHECKPOINT, "9" * 64, exclude_id=kept.id) is None
    assert await repo.find_by_sha256("default", ModelKind.LORA, "9" * 64) is None
    assert await repo.find_by_sha256("acme", ModelKind.CHECKPOINT, "9" * 64) is None
    assert (await repo.find_by_key("b", "checkpoints/one.safetensors")).id == kept.id  # type: ignore[union-attr]
    assert await repo.delete("acme", kept.id) is None  # not the owner
    assert (await repo.delete("default", kept.id)).id == kept.id  # type: ignore[union-attr]
    assert await repo.get("default", kept.id) is None


async def test_uploads(database: Database) -> None:
    repo = ModelRepository(database)
    now = datetime.now(UTC)
    session = UploadSession(id=time_ordered_id(), tenant="default", name="u.safetensors", kind=ModelKind.VAE,
                            state=UploadState.OPEN, staging_key="_uploads/default/x", create_time=now,
                            update_time=now, expire_time=now + timedelta(hours=1), size_bytes=12 << 20,
                            sha256="", request_id="up-1", multipart_id="mp", part_size_bytes=5 << 20)
    await repo.add_upload(session)
    assert await repo.get_upload("acme", session.id) is None
    found = await repo.get_upload("default", session.id)
    assert found == session
    assert found.part_ranges() == [(1, 0, 5 << 20), (2, 5 << 20, 5 << 20), (3, 10 << 20, 2 << 20)]
    assert (await repo.get_upload_by_request_id("default", "up-1")).id == session.id  # type: ignore[union-attr]
    with pytest.raises(ServiceError):
        await repo.add_upload(UploadSession(**{**session.__dict__, "id": time_ordered_id()}))
    await repo.set_upload_assembled(session.id)
    await repo.complete_upload(session.id, "m" * 32)
    done = await repo.get_upload("default", session.id)
    assert done is not None and (done.state, done.model_id, done.multipart_id) == (UploadState.COMPLETED, "m" * 32,
                                                                                  "")
    assert await repo.expired_uploads(now) == []
    assert [u.id for u in await repo.expired_uploads(now + timedelta(hours=2))] == [session.id]
    await repo.delete_upload(session.id)
    assert await repo.get_upload("default", session.id) is None


async def test_active_executions_referencing_a_model(database: Database) -> None:
    executions = ExecutionRepository(database)
    now = datetime.now(UTC)

    async def add(state: ExecutionState, graph: dict[str, dict[str, Any]], tenant: str = "default") -> str:
        record = ExecutionRecord(id=time_ordered_id(), tenant=tenant, state=state, graph=graph, create_time=now,
                                 update_time=now)
        await executions.add(record)
        return record.id

    name = "sd 15\u00e9.safetensors"
    loader: dict[str, Any] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}
    queued = await add(ExecutionState.QUEUED, {"4": loader})
    listing: dict[str, Any] = {"class_type": "X", "inputs": {"names": ["sd 15\u00e9.safetensors"]}}
    running = await add(ExecutionState.RUNNING, {"1": listing})
    await add(ExecutionState.SUCCEEDED, {"4": loader})
    await add(ExecutionState.QUEUED, {"4": loader}, tenant="acme")
    await add(ExecutionState.QUEUED, {"6": {"class_type": "Text", "inputs": {"text": "a sd 15\u00e9.safetensors b"}}})
    found = await executions.active_referencing("default", ["sd 15\u00e9.safetensors"])
    assert found == [queued, running]
    assert await executions.active_referencing("default", ["other.safetensors"]) == []
    assert await executions.active_referencing("default", []) == []
