"""WebhookService over gRPC: request checks and proto ⇄ domain conversion around the domain (subscriptions.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc.aio
from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2

from comfymesh.webhook.v1 import webhook_service_pb2 as pb
from comfymesh.webhook.v1 import webhook_service_pb2_grpc
from service_runtime.errors import FieldViolation, invalid_argument
from service_runtime.grpc.identity import caller_tenant
from services.webhook.domain import (
    Attempt,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    EventType,
    Subscription,
    SubscriptionChanges,
)
from services.webhook.subscriptions import NewSubscription, WebhookSubscriptions

UPDATABLE_FIELDS = ("url", "event_types", "disabled", "progress_interval")
OUTPUT_ONLY_FIELDS = ("subscription_id", "tenant", "create_time", "update_time", "circuit_open", "disabled_reason",
                      "old_secret_expire_time")


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.ToNanoseconds()) / 1e9


def event_type_to_proto(event_type: EventType) -> pb.EventType.ValueType:
    return pb.EventType.Value(f"EVENT_TYPE_EXECUTION_{event_type.short.upper()}")


def event_type_from_proto(value: int) -> EventType:
    name = pb.EventType.Name(value)  # type: ignore[arg-type]
    return EventType("execution." + name.removeprefix("EVENT_TYPE_EXECUTION_").lower())


def _event_types(values: Any, field: str) -> frozenset[EventType]:
    result = set()
    for index, value in enumerate(values):
        try:
            if value == pb.EVENT_TYPE_UNSPECIFIED:
                raise ValueError
            result.add(event_type_from_proto(value))
        except ValueError:
            raise invalid_argument("unknown or unspecified event type", FieldViolation(
                f"{field}[{index}]", f"{value} is not an event type", "INVALID_EVENT_TYPE")) from None
    return frozenset(result)


def subscription_to_proto(subscription: Subscription, now: datetime | None = None) -> pb.Subscription:
    message = pb.Subscription(
        subscription_id=subscription.id, url=subscription.url, disabled=subscription.disabled,
        tenant=subscription.tenant, circuit_open=subscription.circuit_open,
        disabled_reason=subscription.disabled_reason,
        event_types=sorted(event_type_to_proto(t) for t in subscription.event_types))
    if subscription.progress_interval_seconds:
        message.progress_interval.CopyFrom(_duration(subscription.progress_interval_seconds))
    message.create_time.CopyFrom(_timestamp(subscription.create_time))
    message.update_time.CopyFrom(_timestamp(subscription.update_time))
    expire = subscription.old_secret_expire_time(now or datetime.now(UTC))
    if expire is not None:
        message.old_secret_expire_time.CopyFrom(_timestamp(expire))
    return message


def _attempt_to_proto(attempt: Attempt) -> pb.DeliveryAttempt:
    message = pb.DeliveryAttempt(http_status=attempt.http_status, error=attempt.error)
    message.attempt_time.CopyFrom(_timestamp(attempt.attempt_time))
    message.latency.CopyFrom(_duration(attempt.latency_seconds))
    return message


def delivery_state_to_proto(state: DeliveryState) -> pb.DeliveryState.ValueType:
    return pb.DeliveryState.Value(f"DELIVERY_STATE_{state}")


def delivery_to_proto(delivery: Delivery) -> pb.Delivery:
    message = pb.Delivery(
        delivery_id=delivery.id, subscription_id=delivery.subscription_id, url=delivery.url,
        event_type=event_type_to_proto(delivery.event_type), execution_id=delivery.execution_id,
        state=delivery_state_to_proto(delivery.state), payload_json=delivery.payload_json,
        attempt_count=delivery.attempt_count, last_http_status=delivery.last_http_status,
        last_error=delivery.last_error, attempts=[_attempt_to_proto(a) for a in delivery.attempts])
    if delivery.state is DeliveryState.PENDING:
        message.next_attempt_time.CopyFrom(_timestamp(delivery.next_attempt_time))
    message.create_time.CopyFrom(_timestamp(delivery.create_time))
    if delivery.last_attempt_time is not None:
        message.last_attempt_time.CopyFrom(_timestamp(delivery.last_attempt_time))
    return message


def new_subscription_from_request(request: pb.CreateSubscriptionRequest) -> NewSubscription:
    if not request.HasField("subscription"):
        raise invalid_argument("subscription is required", FieldViolation("subscription", "required", "REQUIRED"))
    given = request.subscription
    interval = _seconds(given.progress_interval) if given.HasField("progress_interval") else 0.0
    return NewSubscription(url=given.url, event_types=_event_types(given.event_types, "subscription.event_types"),
                           disabled=given.disabled, progress_interval_seconds=interval,
                           request_id=request.request_id)


def changes_from_request(request: pb.UpdateSubscriptionRequest) -> SubscriptionChanges:
    """AIP-134: the fields named by the mask, or every populated field when the mask is empty ("*": all)."""
    given = request.subscription
    paths = list(request.update_mask.paths)
    if not paths:
        paths = [name for name, populated in (
            ("url", bool(given.url)), ("event_types", bool(given.event_types)), ("disabled", given.disabled),
            ("progress_interval", given.HasField("progress_interval"))) if populated]
    elif "*" in paths:
        paths = list(UPDATABLE_FIELDS)
    for index, path in enumerate(paths):
        if path not in UPDATABLE_FIELDS and path not in OUTPUT_ONLY_FIELDS:
            raise invalid_argument(f"update_mask names {path!r}, which is not an updatable field", FieldViolation(
                f"update_mask.paths[{index}]", f"one of {', '.join(UPDATABLE_FIELDS)}", "INVALID_FIELD_MASK"))
    return SubscriptionChanges(
        url=given.url if "url" in paths else None,
        event_types=_event_types(given.event_types, "subscription.event_types") if "event_types" in paths else None,
        disabled=given.disabled if "disabled" in paths else None,
        progress_interval_seconds=(_seconds(given.progress_interval) if given.HasField("progress_interval") else 0.0)
        if "progress_interval" in paths else None)


def filter_from_request(request: pb.ListDeliveriesRequest) -> DeliveryFilter:
    state: DeliveryState | None = None
    if request.state:
        try:
            state = DeliveryState(pb.DeliveryState.Name(request.state).removeprefix("DELIVERY_STATE_"))
        except ValueError:
            raise invalid_argument("unknown delivery state", FieldViolation(
                "state", f"{request.state} is not a delivery state", "INVALID_STATE")) from None
    return DeliveryFilter(subscription_id=request.subscription_id, execution_id=request.execution_id, state=state)


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    def __init__(self, subscriptions: WebhookSubscriptions, tenant_secret: Callable[[str], str]) -> None:
        self._subscriptions = subscriptions
        self._tenant_secret = tenant_secret

    async def CreateSubscription(self, request: pb.CreateSubscriptionRequest,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> pb.CreateSubscriptionResponse:
        subscription = await self._subscriptions.create(caller_tenant(context), new_subscription_from_request(request))
        return pb.CreateSubscriptionResponse(subscription=subscription_to_proto(subscription),
                                             secret=subscription.secret)

    async def GetSubscription(self, request: pb.GetSubscriptionRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> pb.Subscription:
        return subscription_to_proto(await self._subscriptions.get(caller_tenant(context), request.subscription_id))

    async def ListSubscriptions(self, request: pb.ListSubscriptionsRequest,
                                context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListSubscriptionsResponse:
        subscriptions, token = await self._subscriptions.list_subscriptions(
            caller_tenant(context), request.page_size, request.page_token)
        now = datetime.now(UTC)
        return pb.ListSubscriptionsResponse(subscriptions=[subscription_to_proto(s, now) for s in subscriptions],
                                            next_page_token=token)

    async def UpdateSubscription(self, request: pb.UpdateSubscriptionRequest,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> pb.Subscription:
        if not request.HasField("subscription"):
            raise invalid_argument("subscription is required", FieldViolation("subscription", "required",
                                                                              "REQUIRED"))
        updated = await self._subscriptions.update(caller_tenant(context), request.subscription.subscription_id,
                                                   changes_from_request(request))
        return subscription_to_proto(updated)

    async def DeleteSubscription(self, request: pb.DeleteSubscriptionRequest,
                                 context: grpc.aio.ServicerContext[Any, Any]) -> empty_pb2.Empty:
        await self._subscriptions.delete(caller_tenant(context), request.subscription_id)
        return empty_pb2.Empty()

    async def RotateSubscriptionSecret(self, request: pb.RotateSubscriptionSecretRequest,
                                       context: grpc.aio.ServicerContext[Any, Any]
                                       ) -> pb.RotateSubscriptionSecretResponse:
        overlap = _seconds(request.overlap) if request.HasField("overlap") else None
        secret, until = await self._subscriptions.rotate_secret(caller_tenant(context), request.subscription_id,
                                                                overlap)
        response = pb.RotateSubscriptionSecretResponse(secret=secret)
        if until is not None:
            response.old_secret_expire_time.CopyFrom(_timestamp(until))
        return response

    async def ListDeliveries(self, request: pb.ListDeliveriesRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListDeliveriesResponse:
        deliveries, token = await self._subscriptions.list_deliveries(
            caller_tenant(context), filter_from_request(request), request.page_size, request.page_token)
        return pb.ListDeliveriesResponse(deliveries=[delivery_to_proto(d) for d in deliveries],
                                         next_page_token=token)

    async def GetDelivery(self, request: pb.GetDeliveryRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.Delivery:
        return delivery_to_proto(await self._subscriptions.get_delivery(caller_tenant(context), request.delivery_id))

    async def RedeliverWebhook(self, request: pb.RedeliverWebhookRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.Delivery:
        return delivery_to_proto(await self._subscriptions.redeliver(caller_tenant(context), request.delivery_id))

    async def GetWebhookSigningSecret(self, request: pb.GetWebhookSigningSecretRequest,
                                      context: grpc.aio.ServicerContext[Any, Any]) -> pb.WebhookSigningSecret:
        return pb.WebhookSigningSecret(secret=self._tenant_secret(caller_tenant(context)))
