"""When to try a delivery again, and whether to: the retry schedule, jitter, `Retry-After`, the response policy.

Policy (Standard Webhooks, and what Svix, Stripe and GitHub do): a 2xx response is a delivery. Every other outcome
(3xx, since redirects are never followed; 4xx; 5xx; timeouts; connection errors) is a failed attempt that is
retried on the schedule, because most 4xx answers from a webhook endpoint are transient misconfigurations (a
deploy that briefly returns 404, a secret being rolled out answering 401) that the owner fixes within the hours
the schedule spans. The exceptions give up at once:

- 410 Gone: the receiver says the endpoint is gone for good; the subscription is disabled (Standard Webhooks'
  recommendation) and the delivery dead-lettered;
- a URL the SSRF guard refuses at delivery time (its host now resolves to a private address): retrying cannot
  help and must not happen.

On 429 and 503 a `Retry-After` (delta-seconds or an HTTP date) is honoured: the next attempt is not made before
it, capped at the schedule's longest delay. After the schedule's last retry the delivery is dead-lettered; a
RedeliverWebhook starts a new round of the schedule.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
RETRY_AFTER_STATUSES = frozenset({429, 503})
GONE = 410


def parse_duration(text: str) -> float:
    """"500ms", "5s", "2m", "1.5h", "1d" or a bare number of seconds."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (like 500ms, 5s, 2m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class RetrySchedule:
    """Delays before retry 1, 2, ... n; the first attempt is immediate, so a delivery gets n + 1 attempts."""

    delays: tuple[float, ...]
    jitter: float = 0.2

    @classmethod
    def parse(cls, text: str, jitter: float = 0.2) -> RetrySchedule:
        delays = tuple(parse_duration(part) for part in text.split(",") if part.strip())
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        return cls(delays, jitter)

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    @property
    def longest_delay(self) -> float:
        return max(self.delays, default=0.0)

    @property
    def horizon_seconds(self) -> float:
        """The longest a round of attempts can take (every delay at its jitter maximum)."""
        return sum(self.delays) * (1 + self.jitter)

    def delay_after(self, attempts: int, rng: random.Random | None = None) -> float | None:
        """The delay before the next attempt after `attempts` failed ones in this round; None: no more retries."""
        if attempts < 1 or attempts > len(self.delays):
            return None
        base = self.delays[attempts - 1]
        if self.jitter <= 0:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)  # jitter, not a secret
        return max(0.0, base * (1 + spread))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def next_delay(schedule: RetrySchedule, round_attempts: int, status: int, retry_after: str | None,
               rng: random.Random | None = None) -> float | None:
    """The delay before the next attempt after a failed one (`round_attempts` made in this round, this one
    included); None when the delivery is to be dead-lettered."""
    delay = schedule.delay_after(round_attempts, rng)
    if delay is None:
        return None
    if status in RETRY_AFTER_STATUSES:
        wait = parse_retry_after(retry_after)
        if wait is not None:
            delay = max(delay, min(wait, max(schedule.longest_delay, delay)))
    return delay
