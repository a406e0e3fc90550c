"""The egress guard for URLs fetched server-side (executor inputs, ModelService imports): no private addresses,
no DNS rebinding.

`resolve_and_check` accepts only http/https URLs with a host, resolves every address of the host and refuses the
URL when any of them is not a public unicast address (loopback, RFC 1918 and unique-local, link-local, CGNAT,
multicast, reserved, unspecified, and the same addresses wrapped in IPv4-mapped, 6to4 or NAT64 IPv6 forms).
`allow_private=True` (a configuration choice for deployments whose inputs live on internal servers) opens the
private kinds, but never the cloud instance-metadata endpoints, the unspecified/"this network" addresses,
multicast, broadcast or reserved ranges: none of those is ever a file server, and the metadata endpoint is the
classic SSRF credential theft.

`open_checked` then fetches with the connection pinned to the vetted addresses: the request goes to the IP that
was checked, with the original `Host` header and TLS server name (SNI, and so certificate verification) of the
URL's host, so a second DNS answer (rebinding) can never redirect the connection. Redirects are not followed by
httpx; each hop's target is parsed, resolved, checked and pinned again, up to `MAX_REDIRECTS` hops.

Refusals are `INVALID_ARGUMENT` with reason `URL_NOT_ALLOWED` and a field violation, not `PERMISSION_DENIED`:
the refusal does not depend on who the caller is (no credential or role would make a loopback URL fetchable, so
PERMISSION_DENIED would send clients looking for a permission that does not exist); it is the argument itself
that is unusable under this deployment's policy, retrying it can never succeed, and the fix is to change the
field, which is what INVALID_ARGUMENT plus a BadRequest field violation says (HTTP 400 at the gateway).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from enum import StrEnum

import grpc
import httpx

from service_runtime.errors import FieldViolation, Reason, ServiceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_URL_LENGTH = 8192
MAX_REDIRECTS = 5

# Instance-metadata services (AWS/GCP/Azure/OCI/DigitalOcean, AWS ECS task metadata, AWS IPv6 IMDS, Alibaba).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the low 32 bits are an IPv4 address


class AddressKind(StrEnum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    LINK_LOCAL = "link-local"
    SHARED = "shared (CGNAT)"
    NON_GLOBAL = "not globally routable"
    METADATA = "cloud instance metadata"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    BROADCAST = "broadcast"
    RESERVED = "reserved"


# What `allow_private` opens; the other non-public kinds are refused whatever the configuration.
PRIVATE_KINDS = frozenset({AddressKind.LOOPBACK, AddressKind.PRIVATE, AddressKind.LINK_LOCAL, AddressKind.SHARED,
                           AddressKind.NON_GLOBAL})


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002::/16) or NAT64 (64:ff9b::/96) address reaches."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify_address(address: IPAddress) -> AddressKind:
    """What kind of address this is; only `PUBLIC` is fetchable without `allow_private`."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return classify_address(inner)
        address = ipaddress.IPv6Address(int(address))  # drop a %scope: it changes nothing about the kind
    if address in METADATA_ADDRESSES:
        return AddressKind.METADATA
    if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
        return AddressKind.UNSPECIFIED
    if address.is_loopback:
        return AddressKind.LOOPBACK
    if address.is_multicast:
        return AddressKind.MULTICAST
    if address == _BROADCAST:
        return AddressKind.BROADCAST
    if address.is_link_local:
        return AddressKind.LINK_LOCAL
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return AddressKind.SHARED
    if address.is_reserved:  # 240/4; in IPv6 ::/8 (IPv4-compatible ::a.b.c.d included) and other unassigned space
        return AddressKind.RESERVED
    if address.is_private or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return AddressKind.PRIVATE
    if not address.is_global:
        return AddressKind.NON_GLOBAL
    return AddressKind.PUBLIC


def is_allowed(address: IPAddress, *, allow_private: bool) -> bool:
    kind = classify_address(address)
    return kind is AddressKind.PUBLIC or (allow_private and kind in PRIVATE_KINDS)


def redact_url(url: httpx.URL | str) -> str:
    """scheme://host[:port]/path: no credentials, no query (presigned signatures) in errors and logs."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<unparseable url>"


def _not_allowed(field: str, message: str, sub_reason: str, url: httpx.URL | str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.URL_NOT_ALLOWED, message,
                        {"url": redact_url(url), **metadata}, (FieldViolation(field, message, sub_reason),))


def fetch_failed(message: str, *, retryable: bool, url: httpx.URL | str, **metadata: str) -> ServiceError:
    """URL_FETCH_FAILED: UNAVAILABLE when trying again may work (timeouts, 5xx), INVALID_ARGUMENT otherwise."""
    if retryable:
        return ServiceError(grpc.StatusCode.UNAVAILABLE, Reason.URL_FETCH_FAILED, message,
                            {"url": redact_url(url), **metadata}, retry_after_seconds=1.0)
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, Reason.URL_FETCH_FAILED, message,
                        {"url": redact_url(url), **metadata})


def parse_url(url: str, *, field: str = "url") -> httpx.URL:
    """The URL as httpx will send it (the same parser checks and fetches: no parser differential)."""
    if len(url) > MAX_URL_LENGTH:
        raise _not_allowed(field, f"URL longer than {MAX_URL_LENGTH} characters", "URL_TOO_LONG", url[:64])
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise _not_allowed(field, f"not a valid URL: {exc}", "URL_MALFORMED", url) from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise _not_allowed(field, f"only http and https URLs are fetched, not {parsed.scheme or 'a relative URL'!r}",
                           "SCHEME_NOT_ALLOWED", parsed, scheme=parsed.scheme)
    if not parsed.raw_host:
        raise _not_allowed(field, "the URL has no host", "HOST_MISSING", parsed)
    return parsed


def resolve_host(host: str, port: int) -> list[str]:
    """Every address of `host` (blocking: `getaddrinfo`). Tests replace this to answer DNS without a network."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def check_url(url: httpx.URL, *, allow_private: bool, field: str = "url",
                    redirected_from: httpx.URL | None = None) -> list[IPAddress]:
    """Resolves a parsed URL's host and vets every address (refusing the URL if any one is not allowed)."""
    host = url.raw_host.decode("ascii")
    extra = {"redirected_from": redact_url(redirected_from)} if redirected_from is not None else {}
    try:
        answers = await asyncio.to_thread(resolve_host, host, _default_port(url))
    except socket.gaierror as exc:
        permanent = exc.errno in {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
        raise fetch_failed(f"cannot resolve {host!r}: {exc.strerror or exc}", retryable=not permanent, url=url,
                           host=host, **extra) from exc
    except (OSError, UnicodeError) as exc:
        raise fetch_failed(f"cannot resolve {host!r}: {exc}", retryable=True, url=url, host=host, **extra) from exc
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer)
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise fetch_failed(f"{host!r} has no IP address", retryable=False, url=url, host=host, **extra)
    for address in addresses:
        kind = classify_address(address)
        if not is_allowed(address, allow_private=allow_private):
            via = f" (redirected from {redact_url(redirected_from)})" if redirected_from is not None else ""
            opened = " and allow_private_urls does not open it" if kind not in PRIVATE_KINDS else ""
            message = f"{host!r} resolves to {address}, a {kind} address{opened}: not fetched{via}"
            raise _not_allowed(field, message, "ADDRESS_NOT_ALLOWED", url, host=host, address=str(address),
                               address_kind=str(kind), **extra)
    return addresses


async def resolve_and_check(url: str, *, allow_private: bool, field: str = "url") -> list[IPAddress]:
    """Every address `url`'s host resolves to, all vetted; a typed ServiceError when the URL may not be fetched."""
    return await check_url(parse_url(url, field=field), allow_private=allow_private, field=field)


def _host_header(url: httpx.URL) -> str:
    return url.netloc.decode("ascii")  # IDNA host, brackets for IPv6, the port when not the default


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def _send_pinned(client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress],
                       headers: Mapping[str, str]) -> httpx.Response:
    """Sends GET `url` to one of the vetted addresses (in order, the next on a connect failure)."""
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    last_error: Exception | None = None
    for address in addresses:
        try:
            request = client.build_request("GET", url.copy_with(host=str(address)),
                                           headers={**headers, "Host": _host_header(url)}, extensions=extensions)
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            if _certificate_error(exc) is not None:
                raise fetch_failed(f"TLS certificate of {url.raw_host.decode('ascii')} not valid: "
                                   f"{_certificate_error(exc)}", retryable=False, url=url) from exc
            last_error = exc
        except httpx.TimeoutException as exc:
            raise fetch_failed(f"timed out fetching {redact_url(url)}: {type(exc).__name__}", retryable=True,
                               url=url) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise fetch_failed(f"fetching {redact_url(url)} failed: {type(exc).__name__}: {exc}", retryable=True,
                               url=url) from exc
    raise fetch_failed(f"cannot connect to {url.raw_host.decode('ascii')} at {', '.join(map(str, addresses))}: "
                       f"{last_error}", retryable=True, url=url)


@asynccontextmanager
async def open_checked(client: httpx.AsyncClient, url: str, *, allow_private: bool, field: str = "url",
                       max_redirects: int = MAX_REDIRECTS,
                       headers: Mapping[str, str] | None = None) -> AsyncIterator[httpx.Response]:
    """A streaming GET of `url` whose every hop is vetted and pinned; yields the final (non-redirect) response.

    The caller reads the body (`aiter_bytes`) and judges the status; the response is closed on exit.
    """
    current = parse_url(url, field=field)
    previous: httpx.URL | None = None
    hops = 0
    while True:
        addresses = await check_url(current, allow_private=allow_private, field=field, redirected_from=previous)
        response = await _send_pinned(client, current, addresses, headers or {})
        if not response.has_redirect_location:
            break
        location = response.headers["Location"]
        await response.aclose()
        hops += 1
        if hops > max_redirects:
            raise fetch_failed(f"more than {max_redirects} redirects from {redact_url(url)}", retryable=False,
                               url=url, status=str(response.status_code))
        try:
            target = str(current.join(location))
        except (httpx.InvalidURL, TypeError, ValueError):
            raise fetch_failed(f"{redact_url(current)} redirected to an invalid location", retryable=False,
                               url=current, status=str(response.status_code)) from None
        previous, current = current, parse_url(target, field=field)
    try:
        yield response
    finally:
        await response.aclose()
