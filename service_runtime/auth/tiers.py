"""Pricing tiers and the limits they set (seeds §10: basic, pro, enterprise), with a tenant's own overrides.

The tier defaults come from settings (`COMFYMESH_AUTH_RATE_LIMITS`, `..._EXECUTION_LIMITS`, `..._MONTHLY_BUDGETS_USD`);
a tenant's limit fields that are 0 take its tier's default. A budget or a limit of 0 after that means unlimited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from service_runtime.settings import Settings


class Tier(StrEnum):
    """`comfymesh.auth.v1.Tier` without the `TIER_` prefix."""

    BASIC = "BASIC"
    PRO = "PRO"
    ENTERPRISE = "ENTERPRISE"


@dataclass(frozen=True)
class Limits:
    """A tenant's limits. 0 = unlimited once resolved (in a tenant's own overrides: 0 = the tier's default)."""

    requests_per_second: float = 0.0
    burst: int = 0
    max_concurrent_executions: int = 0
    max_queued_executions: int = 0
    monthly_budget_usd: float = 0.0

    def over(self, defaults: Limits) -> Limits:
        """These limits with every 0 field taken from `defaults`."""
        return Limits(
            requests_per_second=self.requests_per_second or defaults.requests_per_second,
            burst=self.burst or defaults.burst,
            max_concurrent_executions=self.max_concurrent_executions or defaults.max_concurrent_executions,
            max_queued_executions=self.max_queued_executions or defaults.max_queued_executions,
            monthly_budget_usd=self.monthly_budget_usd or defaults.monthly_budget_usd,
        )


def _pairs(spec: str, setting: str) -> dict[Tier, str]:
    found: dict[Tier, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            tier = Tier(name.strip().upper())
        except ValueError:
            raise ValueError(f"{setting}: unknown tier {name.strip()!r} (basic, pro, enterprise)") from None
        if not sep or not value.strip():
            raise ValueError(f"{setting}: {item!r} is not tier=value")
        found[tier] = value.strip()
    return found


def _numbers(value: str, count: int, setting: str) -> list[float]:
    parts = value.split(":")
    if len(parts) != count:
        raise ValueError(f"{setting}: {value!r} must have {count} numbers separated by ':'")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{setting}: {value!r} is not numeric") from None
    if any(n < 0 for n in numbers):
        raise ValueError(f"{setting}: {value!r} has a negative number")
    return numbers


@dataclass(frozen=True)
class TierTable:
    """Each tier's default limits."""

    defaults: Mapping[Tier, Limits]

    @classmethod
    def parse(cls, rate_limits: str, execution_limits: str, budgets_usd: str) -> TierTable:
        rates = _pairs(rate_limits, "auth_rate_limits")
        executions = _pairs(execution_limits, "auth_execution_limits")
        budgets = _pairs(budgets_usd, "auth_monthly_budgets_usd")
        table: dict[Tier, Limits] = {}
        for tier in Tier:
            rps, burst = _numbers(rates[tier], 2, "auth_rate_limits") if tier in rates else (0.0, 0.0)
            concurrent, queued = (_numbers(executions[tier], 2, "auth_execution_limits") if tier in executions
                                  else (0.0, 0.0))
            (budget,) = _numbers(budgets[tier], 1, "auth_monthly_budgets_usd") if tier in budgets else (0.0,)
            table[tier] = Limits(requests_per_second=rps, burst=int(burst),
                                 max_concurrent_executions=int(concurrent), max_queued_executions=int(queued),
                                 monthly_budget_usd=budget)
        return cls(MappingProxyType(table))

    @classmethod
    def from_settings(cls, settings: Settings) -> TierTable:
        return cls.parse(settings.auth_rate_limits, settings.auth_execution_limits, settings.auth_monthly_budgets_usd)

    def effective(self, tier: Tier, overrides: Limits) -> Limits:
        """A tenant's limits: its own non-zero fields, else its tier's."""
        return overrides.over(self.defaults[tier])
