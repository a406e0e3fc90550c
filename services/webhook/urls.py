"""Which webhook URLs may be used: the platform's SSRF guard, applied when a subscription is written and again on
every attempt (DNS answers change; a name that was public yesterday may point at 10.0.0.5 today).

Private, loopback, link-local and CGNAT addresses are refused unless `webhook_allow_private_urls` is on; cloud
metadata, multicast, reserved and unspecified addresses are refused whatever the setting. Plain http is refused
unless `webhook_allow_http` is on. Refusals are INVALID_ARGUMENT with reason URL_NOT_ALLOWED and a field violation.
"""

from __future__ import annotations

import dataclasses

import grpc
import httpx

from service_runtime.errors import FieldViolation, Reason, ServiceError
from service_runtime.net.url_guard import IPAddress, check_url, parse_url, redact_url

MAX_URL_LENGTH = 2048

__all__ = ["MAX_URL_LENGTH", "IPAddress", "UrlPolicy", "redact_url"]


@dataclasses.dataclass(frozen=True)
class UrlPolicy:
    allow_private: bool
    allow_http: bool

    def parse(self, url: str, field: str) -> httpx.URL:
        """The URL as it will be sent, checked for everything but its addresses."""
        if len(url) > MAX_URL_LENGTH:
            message = f"a webhook URL has at most {MAX_URL_LENGTH} characters"
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.URL_NOT_ALLOWED, message, {},
                               (FieldViolation(field, message, "URL_TOO_LONG"),))
        parsed = parse_url(url, field=field)
        if parsed.scheme != "https" and not self.allow_http:
            message = "webhook URLs must be https (this deployment does not send to plain http)"
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.URL_NOT_ALLOWED, message,
                               {"url": redact_url(parsed)}, (FieldViolation(field, message, "HTTPS_REQUIRED"),))
        return parsed

    async def addresses(self, url: httpx.URL, field: str) -> list[IPAddress]:
        """Every address of the URL's host, each allowed; URL_NOT_ALLOWED, or URL_FETCH_FAILED when the host
        does not resolve (UNAVAILABLE when that may be temporary)."""
        return await check_url(url, allow_private=self.allow_private, field=field)

    async def vet(self, url: str, field: str) -> None:
        """The check of a URL given through the API, with a field violation whatever the reason."""
        parsed = self.parse(url, field)
        try:
            await self.addresses(parsed, field)
        except ServiceError as exc:
            if exc.field_violations:
                raise
            raise dataclasses.replace(exc, field_violations=(
                FieldViolation(field, exc.message, "HOST_NOT_RESOLVABLE"),)) from None
