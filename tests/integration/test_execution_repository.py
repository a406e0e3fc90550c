"""Executions in SQL, on SQLite and PostgreSQL: exact graphs, tenant scoping, idempotency keys, pagination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service_runtime.db import Database
from service_runtime.errors import Reason, ServiceError
from service_runtime.ids import time_ordered_id
from service_runtime.pagination import PageTokenCodec
from services.execution_store.domain import ExecutionFilter, ExecutionRecord, ExecutionState
from services.execution_store.repository import ExecutionRepository
from services.workflow.queries import ExecutionQueries

pytestmark = pytest.mark.integration
GRAPH = {"3": {"class_type": "KSampler", "inputs": {"seed": 2**64 - 1, "cfg": 7.5, "model": ["4", 0]}}}


def _record(tenant: str = "t1", state: ExecutionState = ExecutionState.QUEUED, **overrides: object
            ) -> ExecutionRecord:
    now = datetime.now(UTC)
    values: dict[str, object] = {"id": time_ordered_id(), "tenant": tenant, "state": state, "graph": GRAPH,
                                 "create_time": now, "update_time": now}
    values.update(overrides)
    return ExecutionRecord(**values)  # type: ignore[arg-type]


async def test_round_trip_is_exact(database: Database) -> None:
    repo = ExecutionRepository(database)
    record = _record(labels={"team": "a"}, error={"code": 5, "message": "x"}, queue_timeout_seconds=1.5,
                     outputs=[{"filename": "a.png", "size_bytes": 3}])
    await repo.add(record)
    loaded = await repo.get("t1", record.id)
    assert loaded == record
    assert loaded is not None and loaded.graph["3"]["inputs"]["seed"] == 2**64 - 1
    assert loaded.create_time.tzinfo is not None


async def test_other_tenants_cannot_see_it(database: Database) -> None:
    repo = ExecutionRepository(database)
    record = _record()
    await repo.add(record)
    assert await repo.get("t2", record.id) is None
    queries = ExecutionQueries(repo, PageTokenCodec(b"s"))
    with pytest.raises(ServiceError) as caught:
        await queries.get("t2", record.id)
    assert caught.value.reason == Reason.EXECUTION_NOT_FOUND


async def test_request_id_is_unique_per_tenant(database: Database) -> None:
    repo = ExecutionRepository(database)
    await repo.add(_record(request_id="r1"))
    with pytest.raises(ServiceError) as caught:
        await repo.add(_record(request_id="r1"))
    assert caught.value.reason == Reason.ALREADY_EXISTS
    await repo.add(_record(tenant="t2", request_id="r1"))  # another tenant may reuse it
    found = await repo.get_by_request_id("t1", "r1")
    assert found is not None and found.request_id == "r1"


async def test_pages_cover_everything_newest_first(database: Database) -> None:
    repo = ExecutionRepository(database)
    queries = ExecutionQueries(repo, PageTokenCodec(b"s"))
    ids = []
    for index in range(7):
        record = _record(state=ExecutionState.SUCCEEDED if index % 2 else ExecutionState.QUEUED,
                         labels={"n": str(index % 3)})
        ids.append(record.id)
        await repo.add(record)
    await repo.add(_record(tenant="other"))

    seen, token = [], ""
    while True:
        page, token = await queries.list("t1", ExecutionFilter(), 3, token)
        seen += [r.id for r in page]
        if not token:
            break
    assert seen == list(reversed(ids))

    succeeded, _ = await queries.list("t1", ExecutionFilter(states=(ExecutionState.SUCCEEDED,)), 0, "")
    assert [r.id for r in succeeded] == [ids[5], ids[3], ids[1]]

    labelled, token = await queries.list("t1", ExecutionFilter(labels=(("n", "1"),)), 1, "")
    rest, end = await queries.list("t1", ExecutionFilter(labels=(("n", "1"),)), 1, token)
    assert [r.id for r in labelled + rest] == [ids[4], ids[1]]
    if end:  # a cursor may point past the last match; the page after it is then empty
        tail, _ = await queries.list("t1", ExecutionFilter(labels=(("n", "1"),)), 1, end)
        assert tail == []

    with pytest.raises(ServiceError) as caught:  # a token from another query is refused
        await queries.list("t1", ExecutionFilter(states=(ExecutionState.QUEUED,)), 1, token)
    assert caught.value.reason == Reason.INVALID_PAGE_TOKEN


async def test_time_range_filter(database: Database) -> None:
    repo = ExecutionRepository(database)
    old = _record(create_time=datetime.now(UTC) - timedelta(days=2))
    new = _record()
    await repo.add(old)
    await repo.add(new)
    since = datetime.now(UTC) - timedelta(days=1)
    page, _ = await repo.list("t1", ExecutionFilter(create_time_start=since), before_id=None, limit=10)
    assert [r.id for r in page] == [new.id]
    page, _ = await repo.list("t1", ExecutionFilter(create_time_end=since), before_id=None, limit=10)
    assert [r.id for r in page] == [old.id]
