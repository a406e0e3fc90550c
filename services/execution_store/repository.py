"""Executions in SQL (SQLite or PostgreSQL through the same code)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, Integer, String, Text, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from service_runtime.db import Base, Database, UtcDateTime
from service_runtime.errors import Reason, already_exists
from services.execution_store.domain import TERMINAL_STATES, ExecutionFilter, ExecutionRecord, ExecutionState

ACTIVE_STATES = tuple(str(s) for s in ExecutionState if s not in TERMINAL_STATES)


class ExecutionRow(Base):
    """Mirrors migration 0001_executions."""

    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    graph_json: Mapped[str] = mapped_column(Text)
    inputs_json: Mapped[str] = mapped_column(Text)
    labels_json: Mapped[str] = mapped_column(Text)
    webhook_url: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)
    update_time = mapped_column(UtcDateTime, nullable=False)
    queue_time = mapped_column(UtcDateTime, nullable=True)
    start_time = mapped_column(UtcDateTime, nullable=True)
    end_time = mapped_column(UtcDateTime, nullable=True)
    queue_seconds: Mapped[float] = mapped_column(Float)
    run_seconds: Mapped[float] = mapped_column(Float)
    queue_timeout_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_timeout_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    node_timings_json: Mapped[str] = mapped_column(Text)
    outputs_json: Mapped[str] = mapped_column(Text)
    error_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempt_count: Mapped[int] = mapped_column(Integer)
    executor_id: Mapped[str] = mapped_column(String(128))
    last_event_id: Mapped[str] = mapped_column(String(64))
    device_seconds: Mapped[float] = mapped_column(Float)
    device_type: Mapped[str] = mapped_column(String(128))
    cost_usd: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(Integer)


# Record fields stored as JSON text, and their column names.
_JSON_FIELDS = {"graph": "graph_json", "inputs": "inputs_json", "labels": "labels_json",
                "node_timings": "node_timings_json", "outputs": "outputs_json"}


def _to_row(record: ExecutionRecord) -> ExecutionRow:
    values: dict[str, Any] = {}
    for name, value in vars(record).items():
        if name in _JSON_FIELDS:
            values[_JSON_FIELDS[name]] = json.dumps(value, separators=(",", ":"))
        elif name == "error":
            values["error_json"] = json.dumps(value) if value is not None else None
        else:
            values[name] = str(value) if name == "state" else value
    return ExecutionRow(**values)


def _to_record(row: ExecutionRow) -> ExecutionRecord:
    values: dict[str, Any] = {}
    for column in ExecutionRow.__table__.columns:
        values[column.key] = getattr(row, column.key)
    for name, column_name in _JSON_FIELDS.items():
        values[name] = json.loads(values.pop(column_name))
    error_json = values.pop("error_json")
    values["error"] = json.loads(error_json) if error_json else None
    values["state"] = ExecutionState(values["state"])
    return ExecutionRecord(**values)


class ExecutionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: ExecutionRecord) -> None:
        """Inserts; a second insert with the same (tenant, request_id) is ALREADY_EXISTS."""
        try:
            async with self._db.session() as session:
                session.add(_to_row(record))
        except IntegrityError as exc:
            raise already_exists("an execution with this request_id exists", Reason.ALREADY_EXISTS,
                                 request_id=record.request_id or "") from exc

    async def get(self, tenant: str, execution_id: str) -> ExecutionRecord | None:
        async with self._db.session() as session:
            row = await session.get(ExecutionRow, execution_id)
            return _to_record(row) if row is not None and row.tenant == tenant else None

    async def get_by_request_id(self, tenant: str, request_id: str) -> ExecutionRecord | None:
        async with self._db.session() as session:
            row = (await session.execute(select(ExecutionRow).where(
                ExecutionRow.tenant == tenant, ExecutionRow.request_id == request_id))).scalar_one_or_none()
            return _to_record(row) if row is not None else None

    async def list(self, tenant: str, flt: ExecutionFilter, *, before_id: str | None, limit: int
                   ) -> tuple[list[ExecutionRecord], str | None]:
        """Newest first (ids are time-ordered). Returns the page and the cursor for the next one (None at the end).

        Label selectors are matched in Python over SQL-ordered batches, so the cursor is always the last row
        scanned and pages stay consistent without a JSON operator that differs between databases.
        """
        conditions = [ExecutionRow.tenant == tenant]
        if flt.states:
            conditions.append(ExecutionRow.state.in_([str(s) for s in flt.states]))
        if flt.create_time_start is not None:
            conditions.append(ExecutionRow.create_time >= flt.create_time_start)
        if flt.create_time_end is not None:
            conditions.append(ExecutionRow.create_time < flt.create_time_end)
        page: list[ExecutionRecord] = []
        cursor = before_id
        async with self._db.session() as session:
            while len(page) < limit:
                query = select(ExecutionRow).where(and_(*conditions))
                if cursor is not None:
                    query = query.where(ExecutionRow.id < cursor)
                batch = (await session.execute(query.order_by(ExecutionRow.id.desc()).limit(limit + 1))
                         ).scalars().all()
                if not batch:
                    return page, None
                for row in batch:
                    cursor = row.id
                    record = _to_record(row)
                    if all(record.labels.get(k) == v for k, v in flt.labels):
                        page.append(record)
                        if len(page) == limit:
                            more = row is not batch[-1] or len(batch) > limit
                            return page, cursor if more else None
                if len(batch) <= limit:
                    return page, None
        return page, cursor

    # --- Internal (control-plane) access: not tenant-scoped; never reachable from a caller's request as is. ---

    async def get_internal(self, execution_id: str) -> ExecutionRecord | None:
        async with self._db.session() as session:
            row = await session.get(ExecutionRow, execution_id)
            return _to_record(row) if row is not None else None

    async def delete_unstarted(self, execution_id: str) -> None:
        """Removes a row whose submission was refused after it was written (e.g. the queue was full)."""
        async with self._db.session() as session:
            await session.execute(delete(ExecutionRow).where(
                ExecutionRow.id == execution_id, ExecutionRow.state == str(ExecutionState.QUEUED),
                ExecutionRow.attempt_count == 0))

    async def update_active(self, execution_id: str, **values: Any) -> bool:
        """Updates a row that has not reached a terminal state; False when it has (or does not exist).

        This conditional update is the single arbiter of an execution's end: of two attempts that both finish,
        only the first moves the row to a terminal state, so an execution is never reported finished twice.
        """
        columns: dict[str, Any] = {}
        for name, value in values.items():
            if name in _JSON_FIELDS:
                columns[_JSON_FIELDS[name]] = json.dumps(value, separators=(",", ":"))
            elif name == "error":
                columns["error_json"] = json.dumps(value) if value is not None else None
            else:
                columns[name] = str(value) if name == "state" else value
        columns["update_time"] = datetime.now(UTC)
        columns["version"] = ExecutionRow.version + 1
        async with self._db.session() as session:
            result = await session.execute(
                update(ExecutionRow).where(ExecutionRow.id == execution_id, ExecutionRow.state.in_(ACTIVE_STATES))
                .values(**columns))
            return bool(getattr(result, "rowcount", 0) == 1)

    async def list_active(self, *, updated_before: datetime, limit: int = 500) -> builtins.list[ExecutionRecord]:
        """Unfinished executions not touched since `updated_before` (for the reconciler), oldest first."""
        async with self._db.session() as session:
            rows = (await session.execute(
                select(ExecutionRow).where(ExecutionRow.state.in_(ACTIVE_STATES),
                                           ExecutionRow.update_time < updated_before)
                .order_by(ExecutionRow.id).limit(limit))).scalars().all()
            return [_to_record(row) for row in rows]

    async def active_referencing(self, tenant: str, values: Iterable[str], limit: int = 20) -> builtins.list[str]:
        """Ids of the tenant's unfinished executions (QUEUED, DISPATCHING, RUNNING) whose graph has one of `values`
        as a string input (ModelService: a model name a loader node references), oldest first.

        The graph text is pre-filtered in SQL (the value's JSON spelling is a substring of graph_json), then each
        candidate's inputs are checked exactly, so a name that merely occurs inside a longer string never counts.
        """
        wanted = {v for v in values if v}
        if not wanted:
            return []
        spellings = [json.dumps(v) for v in sorted(wanted)]
        found: builtins.list[str] = []
        async with self._db.session() as session:
            rows = (await session.execute(
                select(ExecutionRow.id, ExecutionRow.graph_json).where(
                    ExecutionRow.tenant == tenant, ExecutionRow.state.in_(ACTIVE_STATES),
                    or_(*[ExecutionRow.graph_json.contains(s, autoescape=True) for s in spellings]))
                .order_by(ExecutionRow.id))).all()
        for execution_id, graph_json in rows:
            graph = json.loads(graph_json)
            if any(_references(node.get("inputs"), wanted) for node in graph.values() if isinstance(node, dict)):
                found.append(execution_id)
                if len(found) >= limit:
                    break
        return found

    # --- Read-only usage queries (AuthService quotas and usage): the tenant's load and its cost ledger. ---

    async def count_active(self, tenant: str) -> dict[str, int]:
        """The tenant's unfinished executions by state ("QUEUED", "DISPATCHING", "RUNNING"; absent = 0)."""
        async with self._db.session() as session:
            rows = (await session.execute(
                select(ExecutionRow.state, func.count()).where(ExecutionRow.state.in_(ACTIVE_STATES),
                                                              ExecutionRow.tenant == tenant)
                .group_by(ExecutionRow.state))).all()
        return {str(state): int(count) for state, count in rows}

    async def cost_since(self, tenant: str, since: datetime, *, created_after: datetime | None = None
                         ) -> tuple[float, float]:
        """The cost ledger: (USD, device-seconds) of the tenant's executions that ended at or after `since`.

        `created_after` bounds the scan by id (ids are time-ordered), so a month's sum reads the tenant's recent
        rows through the (tenant, id) index instead of its whole history."""
        conditions = [ExecutionRow.tenant == tenant, ExecutionRow.end_time >= since]
        if created_after is not None:
            millis = max(0, int(created_after.timestamp() * 1000))
            conditions.append(ExecutionRow.id >= f"{millis:012x}" + "0" * 20)
        async with self._db.session() as session:
            cost, seconds = (await session.execute(
                select(func.coalesce(func.sum(ExecutionRow.cost_usd), 0.0),
                       func.coalesce(func.sum(ExecutionRow.device_seconds), 0.0)).where(*conditions))).one()
        return float(cost), float(seconds)


def _references(value: Any, wanted: set[str]) -> bool:
    if isinstance(value, str):
        return value in wanted
    if isinstance(value, dict):
        return any(_references(v, wanted) for v in value.values())
    if isinstance(value, list):
        return any(_references(v, wanted) for v in value)
    return False
