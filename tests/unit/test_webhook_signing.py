"""Standard Webhooks signatures, checked with the reference verifier (`standardwebhooks`), and secret rotation."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.webhook.domain import EventType, Subscription
from services.webhook.signing import SECRET_PREFIX, new_secret, secret_key, signed_headers, tenant_secret

pytestmark = pytest.mark.unit

BODY = b'{"type":"execution.succeeded","data":{"execution":{"id":"x","note":"caf\xc3\xa9"}}}'


def test_secrets_are_whsec_with_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith(SECRET_PREFIX) and first != second
    assert len(secret_key(first)) == 32
    assert base64.b64decode(first.removeprefix(SECRET_PREFIX)) == secret_key(first)


def test_the_reference_verifier_accepts_our_signature() -> None:
    secret = new_secret()
    headers = signed_headers([secret], "01890abcdef0123456789abcdef01234", int(time.time()), BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers)["data"]["execution"]["id"] == "x"


def test_a_changed_body_id_or_secret_does_not_verify() -> None:
    secret = new_secret()
    headers = signed_headers([secret], "id-1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "id-2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_an_old_timestamp_is_refused_by_receivers() -> None:
    """Why every attempt is signed with a fresh timestamp."""
    secret = new_secret()
    headers = signed_headers([secret], "id-1", int(time.time()) - 3600, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_during_a_rotation_both_secrets_verify() -> None:
    old, new = new_secret(), new_secret()
    headers = signed_headers([new, old], "id-1", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_a_subscription_signs_with_the_old_secret_only_during_the_overlap() -> None:
    now = datetime.now(UTC)
    subscription = Subscription(id="s", tenant="t", url="https://example.com", event_types=frozenset(),
                                create_time=now, update_time=now, secret="whsec_bmV3", previous_secret="whsec_b2xk",
                                previous_secret_expire_time=now + timedelta(hours=1))
    assert subscription.signing_secrets(now) == ["whsec_bmV3", "whsec_b2xk"]
    assert subscription.old_secret_expire_time(now) == now + timedelta(hours=1)
    later = now + timedelta(hours=1, seconds=1)
    assert subscription.signing_secrets(later) == ["whsec_bmV3"]
    assert subscription.old_secret_expire_time(later) is None


def test_tenant_secrets_are_stable_per_deployment_and_differ_per_tenant() -> None:
    assert tenant_secret(b"k1", "a") == tenant_secret(b"k1", "a")
    assert tenant_secret(b"k1", "a") != tenant_secret(b"k1", "b")
    assert tenant_secret(b"k1", "a") != tenant_secret(b"k2", "a")
    secret = tenant_secret(b"k1", "a")
    Webhook(secret).verify(BODY, signed_headers([secret], "id", int(time.time()), BODY))


def test_subscriptions_get_terminal_events_by_default_and_progress_only_on_request() -> None:
    now = datetime.now(UTC)
    default = Subscription(id="s", tenant="t", url="u", event_types=frozenset(), create_time=now, update_time=now,
                           secret="whsec_eA==")
    assert default.wants(EventType.SUCCEEDED) and default.wants(EventType.FAILED)
    assert default.wants(EventType.CANCELLED)
    assert not default.wants(EventType.PROGRESS) and not default.wants(EventType.QUEUED)
    chosen = Subscription(id="s", tenant="t", url="u", event_types=frozenset({EventType.PROGRESS}), create_time=now,
                          update_time=now, secret="whsec_eA==")
    assert chosen.wants(EventType.PROGRESS) and not chosen.wants(EventType.SUCCEEDED)
