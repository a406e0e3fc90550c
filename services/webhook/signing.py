"""Standard Webhooks signatures (https://www.standardwebhooks.com): what every delivery carries.

Headers: `webhook-id` (the delivery id, stable across attempts), `webhook-timestamp` (Unix seconds of this
attempt; receivers refuse ones more than a few minutes off, so it is fresh on every attempt) and
`webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the secret's bytes as the key.
Secrets are `whsec_<base64 of 32 random bytes>`. During a rotation's overlap, the message is signed with both
secrets and the signatures are space-separated, as the spec allows, so a receiver holding either one verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
SECRET_BYTES = 32
_TENANT_SECRET_CONTEXT = b"comfymesh-webhook-tenant-secret:v1:"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def tenant_secret(deployment_secret: bytes, tenant: str) -> str:
    """The secret of a tenant's per-execution webhook URLs: derived from the deployment secret, so every replica
    signs alike without storing it (GetWebhookSigningSecret shows it to the tenant)."""
    key = hmac.new(deployment_secret, _TENANT_SECRET_CONTEXT + tenant.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (its base64 payload decoded)."""
    body = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(body + "=" * (-len(body) % 4))


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()


def signature_header(secrets_: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret, space-separated."""
    if not secrets_:
        raise ValueError("no signing secret")
    return " ".join(signature(s, webhook_id, timestamp, body) for s in secrets_)


def signed_headers(secrets_: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, webhook_id, timestamp, body),
    }
