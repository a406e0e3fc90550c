"""The WebhookService's domain operations: subscriptions (with secret rotation) and the delivery log.

Everything is scoped to the caller's tenant: another tenant's subscription or delivery answers NOT_FOUND, exactly
like a missing one, so ids do not leak across tenants.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service_runtime.errors import FieldViolation, Reason, failed_precondition, invalid_argument, not_found
from service_runtime.ids import is_valid_id, time_ordered_id
from service_runtime.pagination import PageSize, PageTokenCodec
from services.webhook.domain import Delivery, DeliveryFilter, EventType, Subscription, SubscriptionChanges
from services.webhook.repository import WebhookRepository
from services.webhook.signing import new_secret
from services.webhook.urls import UrlPolicy

SUBSCRIPTION_PAGE_SIZE = PageSize(default=100, maximum=1000)
DELIVERY_PAGE_SIZE = PageSize(default=100, maximum=1000)
MAX_PROGRESS_INTERVAL_SECONDS = 24 * 3600.0
MIN_PROGRESS_INTERVAL_SECONDS = 0.1
MAX_OVERLAP_SECONDS = 30 * 24 * 3600.0


def check_id(value: str, field: str, what: str) -> None:
    if not is_valid_id(value):
        raise invalid_argument(f"{field} must be a {what} id (32 lowercase hex characters)",
                               FieldViolation(field, f"{value[:64]!r} is not a {what} id", "INVALID_ID"))


@dataclass(frozen=True)
class NewSubscription:
    url: str
    event_types: frozenset[EventType]
    disabled: bool = False
    progress_interval_seconds: float = 0.0
    request_id: str = ""


def check_progress_interval(seconds: float | None, field: str) -> None:
    if seconds is None or seconds == 0:
        return
    if not MIN_PROGRESS_INTERVAL_SECONDS <= seconds <= MAX_PROGRESS_INTERVAL_SECONDS:
        raise invalid_argument(f"{field} must be between {MIN_PROGRESS_INTERVAL_SECONDS} s and 24 h (0: default)",
                               FieldViolation(field, f"{seconds} s is out of range", "OUT_OF_RANGE"))


class WebhookSubscriptions:
    def __init__(self, repository: WebhookRepository, tokens: PageTokenCodec, policy: UrlPolicy, *,
                 default_overlap_seconds: float, round_horizon_seconds: float,
                 on_resume: Callable[[], None] = lambda: None) -> None:
        """`on_resume`: called when deliveries became due (a redelivery, a subscription enabled again), so the
        worker of this process looks at once."""
        self._repository = repository
        self._on_resume = on_resume
        self._tokens = tokens
        self._policy = policy
        self._default_overlap = default_overlap_seconds
        self._horizon = round_horizon_seconds

    # --- subscriptions -----------------------------------------------------------------------------------------

    async def create(self, tenant: str, request: NewSubscription) -> Subscription:
        """A new subscription with a new secret; the same request_id again returns the first one (secret included,
        since the caller that retries never saw it)."""
        if request.request_id:
            try:
                uuid.UUID(request.request_id)
            except ValueError:
                raise invalid_argument("request_id must be a UUID", FieldViolation(
                    "request_id", "not a UUID (version 4 recommended)", "INVALID_UUID")) from None
            existing = await self._repository.get_subscription_by_request_id(tenant, request.request_id)
            if existing is not None:
                return existing
        if not request.url:
            raise invalid_argument("subscription.url is required",
                                   FieldViolation("subscription.url", "required", "REQUIRED"))
        check_progress_interval(request.progress_interval_seconds, "subscription.progress_interval")
        await self._policy.vet(request.url, "subscription.url")
        now = datetime.now(UTC)
        subscription = Subscription(
            id=time_ordered_id(), tenant=tenant, url=request.url, event_types=request.event_types, create_time=now,
            update_time=now, secret=new_secret(), disabled=request.disabled,
            progress_interval_seconds=request.progress_interval_seconds, request_id=request.request_id or None)
        return await self._repository.add_subscription(subscription)

    async def get(self, tenant: str, subscription_id: str, field: str = "subscription_id") -> Subscription:
        check_id(subscription_id, field, "subscription")
        subscription = await self._repository.get_subscription(tenant, subscription_id)
        if subscription is None:
            raise not_found(f"webhook subscription {subscription_id} not found", Reason.WEBHOOK_NOT_FOUND,
                            subscription_id=subscription_id)
        return subscription

    async def list_subscriptions(self, tenant: str, page_size: int, page_token: str) -> tuple[list[Subscription], str]:
        limit = SUBSCRIPTION_PAGE_SIZE.resolve(page_size)
        query = {"tenant": tenant, "list": "subscriptions"}
        cursor = self._tokens.decode(page_token, query)
        subscriptions, next_cursor = await self._repository.list_subscriptions(
            tenant, after_id=cursor["after"] if cursor else None, limit=limit)
        return subscriptions, (self._tokens.encode({"after": next_cursor}, query) if next_cursor else "")

    async def update(self, tenant: str, subscription_id: str, changes: SubscriptionChanges) -> Subscription:
        check_id(subscription_id, "subscription.subscription_id", "subscription")
        if changes.url is not None:
            if not changes.url:
                raise invalid_argument("subscription.url cannot be emptied",
                                       FieldViolation("subscription.url", "required", "REQUIRED"))
            await self._policy.vet(changes.url, "subscription.url")
        check_progress_interval(changes.progress_interval_seconds, "subscription.progress_interval")
        updated = await self._repository.update_subscription(tenant, subscription_id, changes, datetime.now(UTC))
        if updated is None:
            raise not_found(f"webhook subscription {subscription_id} not found", Reason.WEBHOOK_NOT_FOUND,
                            subscription_id=subscription_id)
        if changes.disabled is False:
            self._on_resume()
        return updated

    async def delete(self, tenant: str, subscription_id: str) -> None:
        check_id(subscription_id, "subscription_id", "subscription")
        if not await self._repository.delete_subscription(tenant, subscription_id, datetime.now(UTC)):
            raise not_found(f"webhook subscription {subscription_id} not found", Reason.WEBHOOK_NOT_FOUND,
                            subscription_id=subscription_id)

    async def rotate_secret(self, tenant: str, subscription_id: str, overlap_seconds: float | None
                            ) -> tuple[str, datetime | None]:
        """A new secret; the old one keeps signing too for the overlap (default from the settings; 0: none).
        Returns the new secret and when the old one stops signing."""
        check_id(subscription_id, "subscription_id", "subscription")
        overlap = self._default_overlap if overlap_seconds is None else overlap_seconds
        if not 0 <= overlap <= MAX_OVERLAP_SECONDS:
            raise invalid_argument("overlap must be between 0 and 30 days",
                                   FieldViolation("overlap", f"{overlap} s is out of range", "OUT_OF_RANGE"))
        now = datetime.now(UTC)
        until = now + timedelta(seconds=overlap) if overlap > 0 else None
        secret = new_secret()
        rotated = await self._repository.rotate_secret(tenant, subscription_id, secret, until, now)
        if rotated is None:
            raise not_found(f"webhook subscription {subscription_id} not found", Reason.WEBHOOK_NOT_FOUND,
                            subscription_id=subscription_id)
        return secret, until

    # --- the delivery log --------------------------------------------------------------------------------------

    async def get_delivery(self, tenant: str, delivery_id: str) -> Delivery:
        check_id(delivery_id, "delivery_id", "delivery")
        delivery = await self._repository.get_delivery(tenant, delivery_id)
        if delivery is None:
            raise not_found(f"webhook delivery {delivery_id} not found", Reason.DELIVERY_NOT_FOUND,
                            delivery_id=delivery_id)
        return delivery

    async def list_deliveries(self, tenant: str, flt: DeliveryFilter, page_size: int, page_token: str
                              ) -> tuple[list[Delivery], str]:
        if flt.subscription_id:
            check_id(flt.subscription_id, "subscription_id", "subscription")
        if flt.execution_id:
            check_id(flt.execution_id, "execution_id", "execution")
        limit = DELIVERY_PAGE_SIZE.resolve(page_size)
        query = {"tenant": tenant, "list": "deliveries", **flt.as_query()}
        cursor = self._tokens.decode(page_token, query)
        deliveries, next_cursor = await self._repository.list_deliveries(
            tenant, flt, before_id=cursor["before"] if cursor else None, limit=limit)
        return deliveries, (self._tokens.encode({"before": next_cursor}, query) if next_cursor else "")

    async def redeliver(self, tenant: str, delivery_id: str) -> Delivery:
        """Schedules the delivery again now (a new round of the retry schedule), keeping its webhook-id."""
        delivery = await self.get_delivery(tenant, delivery_id)
        if delivery.subscription_id:
            subscription = await self._repository.get_subscription(tenant, delivery.subscription_id)
            if subscription is None:
                raise failed_precondition(f"the subscription of delivery {delivery_id} was deleted",
                                          subscription_id=delivery.subscription_id, delivery_id=delivery_id)
        now = datetime.now(UTC)
        redelivered = await self._repository.redeliver(tenant, delivery_id, now,
                                                       now + timedelta(seconds=self._horizon))
        if redelivered is None:
            raise not_found(f"webhook delivery {delivery_id} not found", Reason.DELIVERY_NOT_FOUND,
                            delivery_id=delivery_id)
        self._on_resume()
        return redelivered
