"""Short-lived signed tokens (JWT, EdDSA/Ed25519), verified locally by every service with the public keys.

A token names its signing key in the header (`kid`); the newest key signs, older ones keep verifying until they
retire (rotation). Verification pins the algorithm to the key's (EdDSA): `alg: none`, an HMAC algorithm or any
other algorithm in the header is refused, as are a tampered payload, an expired token and an unknown `kid`.

Claims: `iss` ("comfymesh"), `sub` (principal id), `tenant`, `scope` (space-separated), `key` (the API key the
token was exchanged for, so revoking the key also ends its tokens), `sa` (service account), `iat`, `nbf`, `exp`,
`jti`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
ISSUER = "comfymesh"
LEEWAY_SECONDS = 5  # clock skew between replicas


class TokenError(Exception):
    """Why a token was refused (the message is safe to show the caller)."""


@dataclass(frozen=True)
class PublicSigningKey:
    kid: str
    algorithm: str
    public_key_pem: str
    create_time: datetime
    retire_time: datetime | None = None

    def verifies_at(self, now: datetime) -> bool:
        return self.retire_time is None or self.retire_time > now


@dataclass(frozen=True)
class SigningKeyPair:
    """A signing key with its private half (only AuthService holds these)."""

    public: PublicSigningKey
    private_key: Ed25519PrivateKey


def new_signing_key(now: datetime | None = None) -> SigningKeyPair:
    private = Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return SigningKeyPair(PublicSigningKey(kid=secrets.token_hex(8), algorithm=ALGORITHM, public_key_pem=public_pem,
                                           create_time=now or datetime.now(UTC)), private)


def encrypt_private_key(private: Ed25519PrivateKey, password: bytes) -> str:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(password)).decode()


def decrypt_private_key(pem: str, password: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key is not Ed25519")
    return key


@dataclass(frozen=True)
class TokenClaims:
    principal_id: str
    tenant: str
    scopes: frozenset[str]
    key_id: str
    service_account: bool
    issued_at: datetime
    expires_at: datetime
    token_id: str


def sign_token(pair: SigningKeyPair, claims: TokenClaims) -> str:
    payload: dict[str, Any] = {
        "iss": ISSUER, "sub": claims.principal_id, "tenant": claims.tenant, "scope": " ".join(sorted(claims.scopes)),
        "key": claims.key_id, "sa": claims.service_account, "iat": int(claims.issued_at.timestamp()),
        "nbf": int(claims.issued_at.timestamp()), "exp": int(claims.expires_at.timestamp()), "jti": claims.token_id,
    }
    return jwt.encode(payload, pair.private_key, algorithm=ALGORITHM, headers={"kid": pair.public.kid, "typ": "JWT"})


def token_kid(token: str) -> str:
    """The `kid` of a token's header, checked to name the one algorithm accepted (before any key is looked up)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("the token is malformed") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"the token's algorithm must be {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("the token names no signing key (kid)")
    return kid


def load_public_key(pem: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the signing key is not Ed25519")
    return key


def verify_token(token: str, key: PublicSigningKey, public_key: Ed25519PublicKey | None = None) -> TokenClaims:
    """The claims of a token signed by `key`; TokenError when it is not valid now."""
    if key.algorithm != ALGORITHM:
        raise TokenError("the token's signing key uses an unsupported algorithm")
    try:
        payload = jwt.decode(token, public_key or load_public_key(key.public_key_pem), algorithms=[ALGORITHM],
                             issuer=ISSUER, leeway=LEEWAY_SECONDS,
                             options={"require": ["exp", "iat", "sub", "iss"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.PyJWTError:
        raise TokenError("the token is invalid") from None
    tenant, scope, key_id = payload.get("tenant"), payload.get("scope", ""), payload.get("key", "")
    if not isinstance(tenant, str) or not tenant or not isinstance(scope, str) or not isinstance(key_id, str):
        raise TokenError("the token is invalid")
    return TokenClaims(principal_id=str(payload["sub"]), tenant=tenant, scopes=frozenset(scope.split()),
                       key_id=key_id, service_account=bool(payload.get("sa", False)),
                       issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
                       expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
                       token_id=str(payload.get("jti", "")))
