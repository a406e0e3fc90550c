"""Bearer credentials: API keys (`cm_<prefix>_<secret>`), the internal credential, and how to tell them apart.

An API key is shown once. The database keeps its public lookup prefix and an argon2id hash of the whole key,
never the key itself; verifying one costs a slow hash, which the verifier does once per key per process (it keeps
the SHA-256 of keys it has verified, and re-reads the key's state, not its hash, every second).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from service_runtime.secrets import deployment_secret
from service_runtime.settings import Settings

API_KEY_PREFIX = "cm"
INTERNAL_PREFIX = "cmi_"
_LOOKUP_BYTES = 6  # 12 hex characters: the public, unique lookup part
_SECRET_BYTES = 32
_API_KEY = re.compile(r"^cm_(?P<lookup>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
# argon2id at RFC 9106's second recommended profile scaled down for an API key (whose 256 random bits need no
# stretching; the slow hash guards against a leaked table being usable at all): ~20 ms on one core.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16)


class CredentialKind(StrEnum):
    API_KEY = "api_key"
    TOKEN = "token"  # noqa: S105 - a kind name, not a credential
    INTERNAL = "internal"


@dataclass(frozen=True)
class NewApiKey:
    """A freshly minted key: `secret` is the whole bearer string, shown once; `prefix` ("cm_<lookup>") is public."""

    prefix: str
    secret: str
    secret_hash: str


def new_api_key() -> NewApiKey:
    lookup = secrets.token_hex(_LOOKUP_BYTES)
    body = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
    secret = f"{API_KEY_PREFIX}_{lookup}_{body}"
    return NewApiKey(prefix=f"{API_KEY_PREFIX}_{lookup}", secret=secret, secret_hash=hash_api_key(secret))


def api_key_prefix(bearer: str) -> str | None:
    """The lookup prefix ("cm_<lookup>") of a well-formed API key, else None."""
    match = _API_KEY.match(bearer)
    return f"{API_KEY_PREFIX}_{match['lookup']}" if match else None


def hash_api_key(secret: str) -> str:
    return _HASHER.hash(secret)


def verify_api_key(secret: str, secret_hash: str) -> bool:
    """Constant-time check of a presented key against its stored argon2id hash (slow: run it off the loop)."""
    try:
        return _HASHER.verify(secret_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def fingerprint(bearer: str) -> str:
    """A fast, non-reversible name for a presented credential, for in-memory caches (never stored)."""
    return hashlib.sha256(bearer.encode()).hexdigest()


def kind_of(bearer: str) -> CredentialKind | None:
    if bearer.startswith(INTERNAL_PREFIX):
        return CredentialKind.INTERNAL
    if bearer.startswith(f"{API_KEY_PREFIX}_"):
        return CredentialKind.API_KEY
    if _JWT.match(bearer):
        return CredentialKind.TOKEN
    return None


def bearer_from_metadata(metadata: object) -> str | None:
    """The credential of `authorization: Bearer <credential>` in gRPC metadata (Envoy forwards the HTTP header)."""
    values = [value for key, value in (metadata or ()) if key == "authorization"]  # type: ignore[attr-defined]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, credential = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def internal_credential(settings: Settings) -> str:
    """The credential the platform's components present to each other: `COMFYMESH_AUTH_INTERNAL_CREDENTIAL`, else
    derived from the deployment secret (so every process that shares it agrees without another secret to deploy)."""
    if settings.auth_internal_credential:
        return settings.auth_internal_credential
    digest = hmac.new(deployment_secret(settings), b"comfymesh/internal-credential/v1", hashlib.sha256).digest()
    return INTERNAL_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def same_secret(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())
