"""Client channels between services: keepalive that matches the servers, retries only where AIP-194 allows."""

from __future__ import annotations

import json

import grpc.aio

from service_runtime.settings import Settings
from service_runtime.telemetry import tracing

# Retry UNAVAILABLE only (the connection failed before the server acted), a few times with backoff. Non-idempotent
# RPCs are safe here because UNAVAILABLE from a refused connection means the request never reached a handler;
# creates carry a request_id anyway.
_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


def channel_options(settings: Settings) -> list[tuple[str, int | str]]:
    return [
        ("grpc.keepalive_time_ms", settings.grpc_keepalive_seconds * 1000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
    ]


def create_channel(address: str, settings: Settings, *, bearer: str | None = None) -> grpc.aio.Channel:
    """An insecure (in-mesh) aio channel to `host:port`, traced when tracing is on.

    Every call carries the platform's internal credential (and the tenant of the caller being served), never a
    user's; `bearer`: another credential instead (an executor's API key where it does not share the deployment
    secret). Nothing is added while authentication is off."""
    # Imported here: service_runtime.auth imports service_runtime.grpc.identity.
    from service_runtime.auth.client import bearer_client_interceptors, internal_client_interceptors

    tracing_on = tracing.configure_tracing("client", settings.otel_endpoint)
    auth = bearer_client_interceptors(bearer) if bearer else internal_client_interceptors(settings)
    return grpc.aio.insecure_channel(address, options=channel_options(settings),
                                     interceptors=[*tracing.client_interceptors(tracing_on), *auth])


def channel_to(component: str, settings: Settings, *, bearer: str | None = None) -> grpc.aio.Channel:
    """A channel to a named component ("queue", "execution", ...), wherever settings say it runs."""
    return create_channel(settings.address_of(component), settings, bearer=bearer)
