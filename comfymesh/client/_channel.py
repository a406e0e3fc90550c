"""Where to connect and how: target parsing, the API key as call metadata, and the channel (TLS for https://).

A target is what users type: `127.0.0.1:8080`, `localhost` (port 8080), `http://host:port`, or `https://host`
(TLS, port 443). The gateway serves every service on one port; a service's own gRPC port works the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import grpc.aio
from grpc import StatusCode

from comfymesh.client.errors import FieldViolation, InvalidArgumentError

DEFAULT_URL = "127.0.0.1:8080"
DEFAULT_PORT = 8080  # the gateway's port under `make run`
URL_ENV = "COMFYMESH_URL"
API_KEY_ENV = "COMFYMESH_API_KEY"
HOME_ENV = "COMFYMESH_HOME"
DEFAULT_HOME = ".comfymesh"
ADMIN_KEY_FILE = "admin.key"
# Model chunks and downloads are streamed in 1 MiB pieces; a little headroom for the envelope.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_SCHEME_PORTS = {"http": 80, "https": 443, "grpc": DEFAULT_PORT, "grpcs": 443}
_TLS_SCHEMES = {"https", "grpcs"}


@dataclass(frozen=True)
class Target:
    """A parsed endpoint: `host:port` as gRPC wants it, and whether to use TLS."""

    host: str
    port: int
    tls: bool

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literals are bracketed
        return f"{host}:{self.port}"


def _invalid(url: str, why: str) -> InvalidArgumentError:
    message = f"invalid URL {url!r}: {why}"
    return InvalidArgumentError(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", message,
                           field_violations=(FieldViolation("url", why),), from_server=False)


def parse_target(url: str) -> Target:
    """Parses a user-typed endpoint; anything else (a path, an unknown scheme, a bad port) is InvalidArgumentError."""
    text = url.strip()
    if not text:
        raise _invalid(url, "it is empty")
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else f"grpc://{text}")
    scheme = parts.scheme.lower()
    if scheme not in _SCHEME_PORTS:
        raise _invalid(url, f"unsupported scheme {parts.scheme!r} (use http://, https:// or host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _invalid(url, "a gRPC endpoint has no path or query")
    if parts.username or parts.password:
        raise _invalid(url, "credentials do not go in the URL; use the API key")
    if not parts.hostname:
        raise _invalid(url, "it has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise _invalid(url, f"bad port ({exc})") from None
    if port == 0:
        raise _invalid(url, "port 0 is not a port")
    return Target(parts.hostname, port if port is not None else _SCHEME_PORTS[scheme], scheme in _TLS_SCHEMES)


def default_url() -> str:
    """COMFYMESH_URL, else the local gateway."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def admin_key_path() -> Path:
    """Where `make run` writes the bootstrap admin key: `$COMFYMESH_HOME/admin.key` (home default `.comfymesh`)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME) / ADMIN_KEY_FILE


def default_api_key() -> str | None:
    """COMFYMESH_API_KEY, else the local platform's admin key file when it exists, else None (no credentials)."""
    key = os.environ.get(API_KEY_ENV)
    if key:
        return key.strip()
    try:
        text = admin_key_path().read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The per-call metadata carrying the credential (none without a key)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Long watches sit idle between events; keepalives notice a dead peer instead of hanging forever.
            ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]


def open_channel(target: Target) -> grpc.Channel:
    """A blocking channel to the target."""
    if target.tls:
        return grpc.secure_channel(target.address, grpc.ssl_channel_credentials(), options=_OPTIONS)
    return grpc.insecure_channel(target.address, options=_OPTIONS)


def open_aio_channel(target: Target) -> grpc.aio.Channel:
    """An asyncio channel to the target."""
    if target.tls:
        return grpc.aio.secure_channel(target.address, grpc.ssl_channel_credentials(), options=_OPTIONS)
    return grpc.aio.insecure_channel(target.address, options=_OPTIONS)
