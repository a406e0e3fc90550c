"""The execution store's parts built from a process context (shared by the workflow and execution components)."""

from __future__ import annotations

from services.context import AppContext
from services.execution_store.events import EventLog
from services.execution_store.lifecycle import CostRates, ExecutionLifecycle
from services.execution_store.repository import ExecutionRepository


def event_log(ctx: AppContext) -> EventLog:
    return EventLog(ctx.redis, max_len=ctx.settings.event_stream_max_len,
                    retention_seconds=ctx.settings.event_retention_seconds)


def lifecycle(ctx: AppContext) -> ExecutionLifecycle:
    return ExecutionLifecycle(ExecutionRepository(ctx.db), event_log(ctx),
                              CostRates.parse(ctx.settings.cost_per_device_second_usd))
