"""A circuit breaker per endpoint URL (the seeds' §8.2), kept in the database so every worker replica sees it.

CLOSED: attempts go through; each failed attempt counts, a success resets the count. After `threshold` consecutive
failures the circuit OPENs for `cooldown` seconds: no attempt is made to the endpoint and its due deliveries are
held back (not counted against their retry schedule). When the cool-down has passed, the circuit is HALF_OPEN:
exactly one attempt (the probe, leased for `probe_seconds` so a dead worker cannot hold it forever) goes through;
its success closes the circuit, its failure opens it for another cool-down. A delivery held back past its retry
round's horizon is dead-lettered, so an endpoint that never recovers does not keep deliveries pending forever.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # the cool-down is over and a probe is in flight


@dataclass(frozen=True)
class Circuit:
    endpoint_key: str
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    open_until: datetime | None = None
    probe_until: datetime | None = None

    def is_open(self) -> bool:
        return self.state is not CircuitState.CLOSED


@dataclass(frozen=True)
class Admission:
    """Whether an attempt may go to the endpoint now; when not, the earliest time to look again."""

    allowed: bool
    probe: bool = False
    retry_at: datetime | None = None


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int
    cooldown_seconds: float
    probe_seconds: float

    def admit(self, circuit: Circuit | None, now: datetime) -> tuple[Admission, Circuit | None]:
        """The decision and the circuit to store (None: unchanged)."""
        if circuit is None or circuit.state is CircuitState.CLOSED:
            return Admission(True), None
        if circuit.open_until is not None and circuit.open_until > now:
            return Admission(False, retry_at=circuit.open_until), None
        if circuit.probe_until is not None and circuit.probe_until > now:
            return Admission(False, retry_at=circuit.probe_until), None
        probing = replace(circuit, state=CircuitState.HALF_OPEN,
                          probe_until=now + timedelta(seconds=self.probe_seconds))
        return Admission(True, probe=True), probing

    def on_success(self, circuit: Circuit) -> Circuit:
        return replace(circuit, state=CircuitState.CLOSED, consecutive_failures=0, open_until=None, probe_until=None)

    def on_failure(self, circuit: Circuit, now: datetime) -> Circuit:
        failures = circuit.consecutive_failures + 1
        if circuit.state is CircuitState.HALF_OPEN or failures >= self.threshold:
            return replace(circuit, state=CircuitState.OPEN, consecutive_failures=failures,
                           open_until=now + timedelta(seconds=self.cooldown_seconds), probe_until=None)
        return replace(circuit, consecutive_failures=failures)
