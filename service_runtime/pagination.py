"""AIP-158 pagination: opaque, tamper-evident page tokens bound to the query they were issued for.

A token carries the keyset cursor (the last row's sort key) and a hash of the request's other fields, signed with
an HMAC. A token that was altered, belongs to another query (a filter changed between pages), or is older than
`max_age` is rejected with INVALID_PAGE_TOKEN instead of silently returning the wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service_runtime.errors import FieldViolation, Reason, invalid_argument


@dataclass(frozen=True)
class PageSize:
    default: int
    maximum: int

    def resolve(self, requested: int) -> int:
        """0 → default; above the maximum → coerced down; negative → INVALID_ARGUMENT."""
        if requested < 0:
            raise invalid_argument("page_size must not be negative",
                                   FieldViolation("page_size", f"{requested} < 0", "NEGATIVE_PAGE_SIZE"))
        return self.default if requested == 0 else min(requested, self.maximum)


class PageTokenCodec:
    def __init__(self, secret: bytes, max_age_seconds: int = 24 * 3600) -> None:
        self._secret = secret
        self._max_age = max_age_seconds

    @staticmethod
    def _query_hash(query: Mapping[str, Any]) -> str:
        canonical = json.dumps(query, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, cursor: Mapping[str, Any], query: Mapping[str, Any]) -> str:
        body = json.dumps({"c": cursor, "q": self._query_hash(query), "t": int(time.time())},
                          separators=(",", ":")).encode()
        mac = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def decode(self, token: str, query: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cursor, or None for an empty token (the first page)."""
        if not token:
            return None
        bad = invalid_argument("page_token is invalid, expired, or from a different query",
                               FieldViolation("page_token", "not a token issued for this query", "INVALID_PAGE_TOKEN"),
                               reason=Reason.INVALID_PAGE_TOKEN)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise bad from None
        mac, body = raw[:16], raw[16:]
        if not hmac.compare_digest(mac, hmac.new(self._secret, body, hashlib.sha256).digest()[:16]):
            raise bad
        payload = json.loads(body)
        if payload.get("q") != self._query_hash(query) or time.time() - payload.get("t", 0) > self._max_age:
            raise bad
        cursor: dict[str, Any] = payload["c"]
        return cursor
