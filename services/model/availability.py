"""Availability: matching the executors' cached-model reports (from their heartbeats) to stored models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.model.domain import Location, ModelRecord

TIER_RANK = {"GPU": 0, "RAM": 1, "DISK": 2, "OBJECT_STORE": 3}


@dataclass(frozen=True)
class CachedCopy:
    """One model one executor reported holding, at one tier."""

    executor_id: str
    name: str
    sha256: str
    tier: str  # "GPU", "RAM", "DISK", "OBJECT_STORE"
    report_time: datetime


class CopySource(Protocol):
    async def copies(self) -> list[CachedCopy]: ...


def locate(record: ModelRecord, copies: list[CachedCopy]) -> list[Location]:
    """Where this model is held: by content when the executor reports a digest (its disk cache is content-addressed),
    else by the name its loader nodes use. One location per executor and tier, fastest tier first."""
    found: dict[tuple[str, str], Location] = {}
    for copy in copies:
        matches = copy.sha256 == record.sha256 if copy.sha256 else copy.name == record.executor_name
        if matches:
            found.setdefault((copy.executor_id, copy.tier), Location(copy.executor_id, copy.tier, copy.report_time))
    return sorted(found.values(), key=lambda loc: (TIER_RANK.get(loc.tier, 9), loc.executor_id))
