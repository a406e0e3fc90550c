"""API keys, tokens and tier tables on their own: formats, hashing, signatures, and every way a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from service_runtime.auth.credentials import (
    CredentialKind,
    api_key_prefix,
    bearer_from_metadata,
    internal_credential,
    kind_of,
    new_api_key,
    verify_api_key,
)
from service_runtime.auth.tiers import Limits, Tier, TierTable
from service_runtime.auth.tokens import (
    TokenClaims,
    TokenError,
    decrypt_private_key,
    encrypt_private_key,
    new_signing_key,
    sign_token,
    token_kid,
    verify_token,
)
from service_runtime.settings import Settings

pytestmark = pytest.mark.unit


def _claims(**changes: object) -> TokenClaims:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "principal_id": "p" * 32, "tenant": "acme", "scopes": frozenset({"executions.read"}), "key_id": "k" * 32,
        "service_account": False, "issued_at": now, "expires_at": now + timedelta(minutes=5), "token_id": "t1"}
    values.update(changes)
    return TokenClaims(**values)  # type: ignore[arg-type]


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_api_key_format_prefix_and_hash() -> None:
    key = new_api_key()
    assert key.secret.startswith(key.prefix + "_") and key.prefix.startswith("cm_")
    assert api_key_prefix(key.secret) == key.prefix
    assert key.secret not in key.secret_hash and key.secret_hash.startswith("$argon2id$")
    assert verify_api_key(key.secret, key.secret_hash)
    assert not verify_api_key(key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B"), key.secret_hash)
    assert not verify_api_key(key.secret, "not a hash")
    assert new_api_key().prefix != key.prefix


@pytest.mark.parametrize("bearer", ["cm_short_x", "cm_0123456789ab_tooshort", "cm_0123456789AB_" + "a" * 43, ""])
def test_malformed_api_keys_have_no_prefix(bearer: str) -> None:
    assert api_key_prefix(bearer) is None


def test_kinds_and_bearer_metadata() -> None:
    assert kind_of(new_api_key().secret) is CredentialKind.API_KEY
    assert kind_of("cmi_abc") is CredentialKind.INTERNAL
    assert kind_of("aaa.bbb.ccc") is CredentialKind.TOKEN
    assert kind_of("garbage") is None
    assert bearer_from_metadata((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_from_metadata((("authorization", "bearer  abc "),)) == "abc"
    assert bearer_from_metadata((("authorization", "Basic abc"),)) is None
    assert bearer_from_metadata((("authorization", "Bearer "),)) is None
    assert bearer_from_metadata((("authorization", "Bearer a"), ("authorization", "Bearer b"))) is None
    assert bearer_from_metadata(None) is None


def test_internal_credential_is_derived_from_the_secret_unless_set() -> None:
    one = internal_credential(Settings(secret_key="s1"))
    assert one.startswith("cmi_") and one == internal_credential(Settings(secret_key="s1"))
    assert one != internal_credential(Settings(secret_key="s2"))
    assert internal_credential(Settings(secret_key="s1", auth_internal_credential="cmi_given")) == "cmi_given"


def test_token_round_trip_and_encrypted_private_key() -> None:
    pair = new_signing_key()
    token = sign_token(pair, _claims())
    assert token_kid(token) == pair.public.kid
    claims = verify_token(token, pair.public)
    assert (claims.principal_id, claims.tenant, claims.scopes) == ("p" * 32, "acme", frozenset({"executions.read"}))
    pem = encrypt_private_key(pair.private_key, b"secret")
    assert "ENCRYPTED" in pem
    restored = decrypt_private_key(pem, b"secret")
    assert verify_token(sign_token(type(pair)(pair.public, restored), _claims()), pair.public).tenant == "acme"
    with pytest.raises(ValueError):  # noqa: PT011 - cryptography's own message
        decrypt_private_key(pem, b"wrong")


def test_expired_token_is_refused() -> None:
    pair = new_signing_key()
    past = datetime.now(UTC) - timedelta(minutes=10)
    token = sign_token(pair, _claims(issued_at=past, expires_at=past + timedelta(minutes=1)))
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, pair.public)


def test_tampered_token_is_refused() -> None:
    pair = new_signing_key()
    header, payload, signature = sign_token(pair, _claims()).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "executions.read executions.write auth.admin"
    with pytest.raises(TokenError):
        verify_token(f"{header}.{_b64(claims)}.{signature}", pair.public)
    # A flipped bit in the signature itself (editing its last base64 characters could leave the decoded bytes as
    # they were: the final character carries padding bits).
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(TokenError):
        verify_token(f"{header}.{payload}.{forged}", pair.public)


def test_alg_none_and_other_algorithms_are_refused() -> None:
    pair = new_signing_key()
    now = int(datetime.now(UTC).timestamp())
    body = {"iss": "comfymesh", "sub": "p", "tenant": "acme", "scope": "auth.admin", "iat": now, "exp": now + 300}
    unsigned = f"{_b64({'alg': 'none', 'kid': pair.public.kid, 'typ': 'JWT'})}.{_b64(body)}."
    with pytest.raises(TokenError, match="algorithm"):
        token_kid(unsigned)
    with pytest.raises(TokenError):
        verify_token(unsigned, pair.public)
    # HS256 "signed" with the public key as the HMAC secret: the classic key-confusion attack.
    signing_input = f"{_b64({'alg': 'HS256', 'kid': pair.public.kid, 'typ': 'JWT'})}.{_b64(body)}"
    mac = hmac.new(pair.public.public_key_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    with pytest.raises(TokenError):
        token_kid(confused)
    with pytest.raises(TokenError):
        verify_token(confused, pair.public)


def test_token_signed_by_another_key_is_refused() -> None:
    mine, theirs = new_signing_key(), new_signing_key()
    with pytest.raises(TokenError):
        verify_token(sign_token(theirs, _claims()), mine.public)


def test_tier_table_from_settings_and_overrides() -> None:
    table = TierTable.from_settings(Settings())
    assert table.defaults[Tier.BASIC].monthly_budget_usd == 10
    assert table.defaults[Tier.PRO].monthly_budget_usd == 100
    assert table.defaults[Tier.ENTERPRISE].monthly_budget_usd == 0
    assert table.defaults[Tier.BASIC].requests_per_second > 0
    effective = table.effective(Tier.BASIC, Limits(burst=99, monthly_budget_usd=25))
    assert (effective.burst, effective.monthly_budget_usd) == (99, 25)
    assert effective.requests_per_second == table.defaults[Tier.BASIC].requests_per_second


@pytest.mark.parametrize(("rates", "message"), [
    ("gold=1:2", "unknown tier"), ("basic=1", "2 numbers"), ("basic=-1:2", "negative"), ("basic", "tier=value"),
])
def test_tier_table_rejects_bad_specs(rates: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TierTable.parse(rates, "", "")
