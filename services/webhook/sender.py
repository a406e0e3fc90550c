"""One HTTP attempt of a delivery: vetted, pinned, signed, bounded in time, never redirected.

The URL's host is resolved and every address vetted (urls.py) right before the attempt, and the request is sent to
a vetted address with the URL's `Host` header and TLS server name, so a second DNS answer cannot move it
elsewhere (rebinding). Redirects are not followed at all: a 3xx is a failed attempt, like any other non-2xx.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from service_runtime.errors import Reason, ServiceError
from services.webhook.signing import signed_headers
from services.webhook.urls import UrlPolicy, redact_url

USER_AGENT = "ComfyMesh-Webhooks/1"
MAX_ERROR_BODY_BYTES = 512


@dataclass(frozen=True)
class SendResult:
    status: int  # 0: no response
    latency_seconds: float
    error: str = ""
    retry_after: str | None = None
    refused: bool = False  # the SSRF policy refused the URL: not to be retried

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def _excerpt(response: httpx.Response) -> str:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= MAX_ERROR_BODY_BYTES:
            break
    return data[:MAX_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()


class WebhookSender:
    def __init__(self, client: httpx.AsyncClient, policy: UrlPolicy, *, timeout_seconds: float) -> None:
        self._client = client
        self._policy = policy
        self._timeout = timeout_seconds

    async def send(self, url: str, webhook_id: str, body: bytes, secrets: Sequence[str]) -> SendResult:
        started = time.monotonic()
        try:
            parsed = self._policy.parse(url, "url")
            addresses = await self._policy.addresses(parsed, "url")
        except ServiceError as exc:
            refused = exc.reason == Reason.URL_NOT_ALLOWED
            return SendResult(0, time.monotonic() - started, f"{exc.reason}: {exc.message}", refused=refused)
        headers = {
            **signed_headers(secrets, webhook_id, int(time.time()), body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": parsed.netloc.decode("ascii"),
        }
        extensions = {"sni_hostname": parsed.raw_host.decode("ascii")} if parsed.scheme == "https" else {}
        errors: list[str] = []
        try:
            async with asyncio.timeout(self._timeout):
                for address in addresses:
                    request = self._client.build_request("POST", parsed.copy_with(host=str(address)), headers=headers,
                                                         content=body, extensions=extensions)
                    try:
                        response = await self._client.send(request, stream=True, follow_redirects=False)
                    except httpx.ConnectError as exc:
                        certificate = _certificate_error(exc)
                        if certificate is not None:
                            return SendResult(0, time.monotonic() - started,
                                              f"TLS certificate not valid: {certificate}")
                        errors.append(f"{address}: {exc or type(exc).__name__}")
                        continue
                    try:
                        return await self._judge(response, started)
                    finally:
                        await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return SendResult(0, time.monotonic() - started, f"timed out after {self._timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return SendResult(0, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
        return SendResult(0, time.monotonic() - started, "cannot connect: " + "; ".join(errors))

    async def _judge(self, response: httpx.Response, started: float) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            return SendResult(status, time.monotonic() - started)
        if response.has_redirect_location:
            error = f"HTTP {status}: redirects are not followed (to {redact_url(response.headers['location'])})"
        else:
            excerpt = await _excerpt(response)
            error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
        return SendResult(status, time.monotonic() - started, error, retry_after=response.headers.get("retry-after"))
