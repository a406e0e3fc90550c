"""Submission quotas and the monthly budget against the executions ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from service_runtime.auth.quotas import SubmissionQuotas, check_submission_quota, month_start
from service_runtime.auth.store import CredentialStore
from service_runtime.auth.tiers import Limits, Tier, TierTable
from service_runtime.db import Database
from service_runtime.errors import ServiceError
from service_runtime.ids import time_ordered_id
from services.auth.domain import Tenant
from services.auth.repository import AuthRepository
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.repository import ExecutionRepository

pytestmark = pytest.mark.integration
TIERS = TierTable.parse("basic=5:10,pro=20:40,enterprise=0:0", "basic=2:3,pro=8:100,enterprise=0:0",
                        "basic=10,pro=100,enterprise=0")
NOW = datetime.now(UTC)  # execution ids are time-ordered by the real clock: the ledger bounds its scan by them


async def _tenant(db: Database, tier: Tier, limits: Limits | None = None) -> str:
    tenant_id = time_ordered_id()
    await AuthRepository(db).add_tenant(Tenant(tenant_id, "t", tier, limits or Limits(), NOW), None)
    return tenant_id


async def _execution(db: Database, tenant: str, state: ExecutionState, *, cost: float = 0.0,
                     ended: datetime | None = None, seconds: float = 0.0) -> None:
    record = ExecutionRecord(id=time_ordered_id(), tenant=tenant, state=state, graph={}, create_time=NOW,
                             update_time=NOW, end_time=ended, cost_usd=cost, device_seconds=seconds)
    await ExecutionRepository(db).add(record)


def _quotas(db: Database) -> SubmissionQuotas:
    return SubmissionQuotas(CredentialStore(db), ExecutionRepository(db), TIERS, clock=lambda: NOW)


async def _refusal(quotas: SubmissionQuotas, tenant: str) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await check_submission_quota(quotas, tenant)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    return caught.value


async def test_queued_executions_quota(database: Database) -> None:
    tenant, quotas = await _tenant(database, Tier.BASIC), _quotas(database)
    for _ in range(2):
        await _execution(database, tenant, ExecutionState.QUEUED)
    await quotas.check(tenant)
    await _execution(database, tenant, ExecutionState.QUEUED)
    error = await _refusal(quotas, tenant)
    assert (error.reason, error.metadata["limit"]) == ("QUOTA_EXCEEDED", "max_queued_executions")
    await quotas.check(await _tenant(database, Tier.BASIC))  # other tenants are not affected


async def test_executions_in_flight_quota(database: Database) -> None:
    tenant, quotas = await _tenant(database, Tier.BASIC), _quotas(database)
    for state in (ExecutionState.RUNNING, ExecutionState.DISPATCHING, ExecutionState.QUEUED,
                  ExecutionState.QUEUED, ExecutionState.SUCCEEDED, ExecutionState.FAILED):
        await _execution(database, tenant, state, ended=NOW if state.terminal else None)
    await quotas.check(tenant)  # 4 in flight, limit 2 running + 3 queued
    await _execution(database, tenant, ExecutionState.RUNNING)
    error = await _refusal(quotas, tenant)
    assert (error.reason, error.metadata["limit"]) == ("QUOTA_EXCEEDED", "max_concurrent_executions")


async def test_tenant_limits_override_the_tier(database: Database) -> None:
    tenant = await _tenant(database, Tier.BASIC, Limits(max_queued_executions=1))
    await _execution(database, tenant, ExecutionState.QUEUED)
    assert (await _refusal(_quotas(database), tenant)).reason == "QUOTA_EXCEEDED"


async def test_budget_counts_this_months_ledger_only(database: Database) -> None:
    tenant, quotas = await _tenant(database, Tier.BASIC), _quotas(database)
    start = month_start(NOW)
    await _execution(database, tenant, ExecutionState.SUCCEEDED, cost=50.0, ended=start - timedelta(seconds=1))
    await _execution(database, tenant, ExecutionState.SUCCEEDED, cost=6.0, ended=start + timedelta(days=1),
                     seconds=12_000)
    await quotas.check(tenant)  # $6 of $10 this month; last month's $50 does not count
    await _execution(database, tenant, ExecutionState.FAILED, cost=4.0, ended=NOW, seconds=8_000)
    error = await _refusal(quotas, tenant)
    assert error.reason == "BUDGET_EXCEEDED"
    assert (error.metadata["budget_usd"], error.metadata["month"]) == ("10.00", f"{NOW:%Y-%m}")
    usage = await quotas.usage(tenant)
    assert (usage.month, usage.spent_usd, usage.device_seconds) == (f"{NOW:%Y-%m}", 10.0, 20_000.0)
    assert usage.limits.monthly_budget_usd == 10


async def test_unlimited_tiers_and_unknown_tenants_pass(database: Database) -> None:
    tenant, quotas = await _tenant(database, Tier.ENTERPRISE), _quotas(database)
    for _ in range(5):
        await _execution(database, tenant, ExecutionState.QUEUED)
    await _execution(database, tenant, ExecutionState.SUCCEEDED, cost=1e6, ended=NOW)
    await quotas.check(tenant)
    await quotas.check("no-such-tenant")
    usage = await quotas.usage(tenant)
    assert (usage.queued_executions, usage.running_executions) == (5, 0)


async def test_ledger_queries(database: Database) -> None:
    tenant = time_ordered_id()
    repository = ExecutionRepository(database)
    for state in (ExecutionState.QUEUED, ExecutionState.QUEUED, ExecutionState.RUNNING, ExecutionState.SUCCEEDED):
        await _execution(database, tenant, state, cost=1.5, ended=NOW if state.terminal else None)
    assert await repository.count_active(tenant) == {"QUEUED": 2, "RUNNING": 1}
    assert await repository.count_active("nobody") == {}
    assert await repository.cost_since(tenant, NOW - timedelta(days=1)) == (1.5, 0.0)
    # Bounded by creation: rows created before `created_after` are not scanned.
    assert await repository.cost_since(tenant, NOW - timedelta(days=1),
                                       created_after=datetime.now(UTC) + timedelta(days=1)) == (0.0, 0.0)
