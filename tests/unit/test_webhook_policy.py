"""Retry schedule, jitter, Retry-After, the circuit breaker's states, event types and the transport's conversions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from google.protobuf import field_mask_pb2

from comfymesh.common.v1 import execution_event_pb2 as event_pb
from comfymesh.webhook.v1 import webhook_service_pb2 as pb
from service_runtime.errors import ServiceError
from services.webhook.breaker import BreakerPolicy, Circuit, CircuitState
from services.webhook.domain import EVENT_TYPE_OF_KIND, EventType, parse_event_types
from services.webhook.feed import delivery_id
from services.webhook.schedule import RetrySchedule, next_delay, parse_duration, parse_retry_after
from services.webhook.transport import changes_from_request, event_type_from_proto, event_type_to_proto

pytestmark = pytest.mark.unit


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("5s") == 5 and parse_duration("5") == 5
    assert parse_duration("2m") == 120 and parse_duration("1.5h") == 5400 and parse_duration("1d") == 86400
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_the_default_schedule_backs_off_exponentially_for_hours() -> None:
    from service_runtime.settings import Settings

    schedule = RetrySchedule.parse(Settings().webhook_retry_schedule)
    assert all(b > a for a, b in zip(schedule.delays, schedule.delays[1:], strict=False))
    assert schedule.longest_delay >= 4 * 3600 and schedule.max_attempts == len(schedule.delays) + 1


def test_schedule_with_jitter_stays_within_its_band_and_ends() -> None:
    schedule = RetrySchedule.parse("10s,1m,1h", jitter=0.2)
    rng = random.Random(7)
    samples = [schedule.delay_after(2, rng) for _ in range(200)]
    assert all(s is not None and 48 <= s <= 72 for s in samples)
    assert len(set(samples)) > 100  # actually randomised
    assert schedule.delay_after(3, rng) is not None
    assert schedule.delay_after(4, rng) is None  # 3 retries: the 4th failure dead-letters
    assert schedule.max_attempts == 4
    assert schedule.horizon_seconds == pytest.approx((10 + 60 + 3600) * 1.2)
    assert RetrySchedule.parse("5s", jitter=0).delay_after(1) == 5


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == pytest.approx(90)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_retry_after_is_honoured_on_429_and_503_only_and_capped() -> None:
    schedule = RetrySchedule.parse("1s,1s,1h", jitter=0)
    assert next_delay(schedule, 1, 429, "30") == 30
    assert next_delay(schedule, 1, 503, "30") == 30
    assert next_delay(schedule, 1, 500, "30") == 1  # only 429/503 carry a meaningful Retry-After
    assert next_delay(schedule, 1, 429, "1") == 1  # never sooner than the schedule
    assert next_delay(schedule, 1, 429, str(10 * 3600)) == 3600  # capped at the longest delay
    assert next_delay(schedule, 4, 429, "30") is None  # the schedule is over: dead-letter


def test_breaker_opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() -> None:
    policy = BreakerPolicy(threshold=3, cooldown_seconds=60, probe_seconds=10)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    circuit = Circuit("k")
    assert policy.admit(circuit, now)[0].allowed
    for _ in range(2):
        circuit = policy.on_failure(circuit, now)
    assert circuit.state is CircuitState.CLOSED and circuit.consecutive_failures == 2
    assert policy.on_success(circuit).consecutive_failures == 0
    circuit = policy.on_failure(circuit, now)
    assert circuit.state is CircuitState.OPEN and circuit.open_until == now + timedelta(seconds=60)

    admission, changed = policy.admit(circuit, now + timedelta(seconds=30))
    assert not admission.allowed and admission.retry_at == now + timedelta(seconds=60) and changed is None

    probe_time = now + timedelta(seconds=61)
    admission, probing = policy.admit(circuit, probe_time)
    assert admission.allowed and admission.probe and probing is not None
    assert probing.state is CircuitState.HALF_OPEN
    other, _ = policy.admit(probing, probe_time + timedelta(seconds=1))  # one probe at a time
    assert not other.allowed and other.retry_at == probe_time + timedelta(seconds=10)

    reopened = policy.on_failure(probing, probe_time)
    assert reopened.state is CircuitState.OPEN and reopened.open_until == probe_time + timedelta(seconds=60)
    closed = policy.on_success(probing)
    assert closed.state is CircuitState.CLOSED and closed.consecutive_failures == 0 and not closed.is_open()

    # A probe whose worker died: its lease lapses and the next delivery probes.
    assert policy.admit(probing, probe_time + timedelta(seconds=11))[0].probe


def test_event_kinds_map_to_webhook_types() -> None:
    assert EVENT_TYPE_OF_KIND["succeeded"] is EventType.SUCCEEDED
    assert EVENT_TYPE_OF_KIND["node_progress"] is EventType.PROGRESS
    assert "heartbeat" not in EVENT_TYPE_OF_KIND and "retrying" not in EVENT_TYPE_OF_KIND
    assert parse_event_types("succeeded, execution.failed") == {EventType.SUCCEEDED, EventType.FAILED}
    with pytest.raises(ValueError, match="unknown webhook event"):
        parse_event_types("finished")


def test_event_types_round_trip_through_the_contract() -> None:
    for event_type in EventType:
        assert event_type_from_proto(event_type_to_proto(event_type)) is event_type
    assert event_type_to_proto(EventType.SUCCEEDED) == pb.EVENT_TYPE_EXECUTION_SUCCEEDED


def test_delivery_ids_are_stable_per_event_and_endpoint_and_ordered_by_event_time() -> None:
    first = delivery_id("1733500000000-0", "sub:a")
    assert first == delivery_id("1733500000000-0", "sub:a") and len(first) == 32
    assert first != delivery_id("1733500000000-0", "sub:b") != delivery_id("1733500000000-1", "sub:a")
    assert delivery_id("1733500000001-0", "sub:a")[:12] > first[:12]


def test_update_mask_semantics() -> None:
    given = pb.Subscription(subscription_id="x", url="https://example.com/new", disabled=False)
    changes = changes_from_request(pb.UpdateSubscriptionRequest(subscription=given))
    assert changes.url == "https://example.com/new" and changes.disabled is None and changes.event_types is None
    masked = changes_from_request(pb.UpdateSubscriptionRequest(
        subscription=given, update_mask=field_mask_pb2.FieldMask(paths=["disabled"])))
    assert masked.disabled is False and masked.url is None
    everything = changes_from_request(pb.UpdateSubscriptionRequest(
        subscription=given, update_mask=field_mask_pb2.FieldMask(paths=["*"])))
    assert everything.event_types == frozenset() and everything.progress_interval_seconds == 0
    with pytest.raises(ServiceError) as caught:
        changes_from_request(pb.UpdateSubscriptionRequest(
            subscription=given, update_mask=field_mask_pb2.FieldMask(paths=["secret"])))
    assert caught.value.field_violations[0].field == "update_mask.paths[0]"


def test_every_feed_kind_is_mapped_or_deliberately_not_delivered() -> None:
    """The kinds the feed can carry (the ExecutionEvent oneof, previews aside) against the webhook mapping."""
    kinds = {f.name for f in event_pb.ExecutionEvent.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert set(EVENT_TYPE_OF_KIND) | {"preview", "retrying", "heartbeat"} == kinds
