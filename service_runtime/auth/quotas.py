"""Quotas checked when an execution is submitted: executions in flight per tenant, and the monthly budget.

The workflow service calls `SubmissionQuotas.check(tenant)` before it writes a submission:
- the tenant's QUEUED executions at `max_queued_executions` → RESOURCE_EXHAUSTED, reason QUOTA_EXCEEDED;
- its executions in flight (queued, dispatching, running) at `max_concurrent_executions + max_queued_executions`
  → QUOTA_EXCEEDED (a submission may wait in the queue for a free slot, but not beyond the queue's share);
- the cost of its executions that ended this month (UTC), from the ledger the execution service writes
  (device-seconds × the configured rate per device type), at or over its monthly budget → RESOURCE_EXHAUSTED,
  reason BUDGET_EXCEEDED.
A limit or a budget of 0 is unlimited. The checks read, then the submission writes: two racing submissions may
both pass at the edge (the limit is soft by the number of concurrent submitters).

The ledger is a protocol met by `services.execution_store.repository.ExecutionRepository`, so this bottom package
imports no service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from service_runtime.auth.store import CredentialStore, TenantInfo
from service_runtime.auth.tiers import Limits, TierTable
from service_runtime.db import Database
from service_runtime.errors import Reason, resource_exhausted
from service_runtime.settings import Settings

#: Executions ending this month but created this long before it still count (the scan is bounded by creation).
LEDGER_LOOKBACK = timedelta(days=7)
_QUEUED = "QUEUED"
_IN_FLIGHT = ("QUEUED", "DISPATCHING", "RUNNING")


class UsageLedger(Protocol):
    async def count_active(self, tenant: str) -> dict[str, int]: ...

    async def cost_since(self, tenant: str, since: datetime, *, created_after: datetime | None = None
                         ) -> tuple[float, float]: ...


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class TenantUsage:
    tenant_id: str
    month: str  # "YYYY-MM"
    spent_usd: float
    device_seconds: float
    running_executions: int
    queued_executions: int
    limits: Limits  # effective (0 = unlimited)


class SubmissionQuotas:
    def __init__(self, store: CredentialStore, ledger: UsageLedger, tiers: TierTable,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._ledger = ledger
        self._tiers = tiers
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, ledger: UsageLedger) -> SubmissionQuotas:
        return cls(CredentialStore(db), ledger, TierTable.from_settings(settings))

    def limits_of(self, tenant: TenantInfo) -> Limits:
        return self._tiers.effective(tenant.tier, tenant.overrides)

    async def usage(self, tenant_id: str) -> TenantUsage:
        """The tenant's usage this month against its limits (GetUsage). An unknown tenant has no limits."""
        tenant = await self._store.tenant(tenant_id)
        limits = self.limits_of(tenant) if tenant is not None else Limits()
        now = self._clock()
        start = month_start(now)
        counts = await self._ledger.count_active(tenant_id)
        spent, seconds = await self._ledger.cost_since(tenant_id, start, created_after=start - LEDGER_LOOKBACK)
        return TenantUsage(tenant_id=tenant_id, month=start.strftime("%Y-%m"), spent_usd=spent,
                           device_seconds=seconds,
                           running_executions=sum(counts.get(s, 0) for s in _IN_FLIGHT if s != _QUEUED),
                           queued_executions=counts.get(_QUEUED, 0), limits=limits)

    async def check(self, tenant_id: str) -> None:
        """Refuses a new submission of `tenant_id` over its quotas or budget (a RESOURCE_EXHAUSTED ServiceError).
        A tenant without a row (authentication off, before bootstrap) is not limited."""
        tenant = await self._store.tenant(tenant_id)
        if tenant is None:
            return
        limits = self.limits_of(tenant)
        if limits.max_queued_executions or limits.max_concurrent_executions:
            counts = await self._ledger.count_active(tenant_id)
            queued = counts.get(_QUEUED, 0)
            in_flight = sum(counts.get(s, 0) for s in _IN_FLIGHT)
            if limits.max_queued_executions and queued >= limits.max_queued_executions:
                raise resource_exhausted(
                    f"tenant {tenant_id} has {queued} executions queued, its limit", Reason.QUOTA_EXCEEDED,
                    limit="max_queued_executions", max_queued_executions=str(limits.max_queued_executions),
                    queued_executions=str(queued))
            if limits.max_queued_executions and limits.max_concurrent_executions:
                ceiling = limits.max_concurrent_executions + limits.max_queued_executions
                if in_flight >= ceiling:
                    raise resource_exhausted(
                        f"tenant {tenant_id} has {in_flight} executions in flight, its limit", Reason.QUOTA_EXCEEDED,
                        limit="max_concurrent_executions",
                        max_concurrent_executions=str(limits.max_concurrent_executions),
                        executions_in_flight=str(in_flight))
        if limits.monthly_budget_usd > 0:
            start = month_start(self._clock())
            spent, _ = await self._ledger.cost_since(tenant_id, start, created_after=start - LEDGER_LOOKBACK)
            if spent >= limits.monthly_budget_usd:
                raise resource_exhausted(
                    f"tenant {tenant_id} has spent ${spent:.2f} of its ${limits.monthly_budget_usd:.2f} budget for "
                    f"{start:%Y-%m}", Reason.BUDGET_EXCEEDED, budget_usd=f"{limits.monthly_budget_usd:.2f}",
                    spent_usd=f"{spent:.4f}", month=f"{start:%Y-%m}")


async def check_submission_quota(quotas: SubmissionQuotas, tenant_id: str) -> None:
    """The function form of `SubmissionQuotas.check`, for the workflow service's submit path."""
    await quotas.check(tenant_id)
