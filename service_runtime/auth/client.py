"""The calling side: the platform's components present the internal credential on calls to each other.

`internal_client_interceptors(settings)` gives a client channel (service_runtime/grpc/channels.py) interceptors
that add `authorization: Bearer <internal credential>` to every call and, while serving an authenticated caller,
`x-comfymesh-tenant: <that caller's tenant>`, so a call made on a user's behalf acts in the user's tenant and
never with the user's own credential. A call that already carries `authorization` is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc.aio

from service_runtime.auth.credentials import internal_credential
from service_runtime.auth.interceptor import TENANT_METADATA
from service_runtime.grpc.identity import current_caller
from service_runtime.settings import Settings


def _tenant_of_current_call() -> str:
    caller = current_caller()
    return caller.tenant if caller is not None else ""


class _BearerMetadata:
    def __init__(self, credential: str, tenant: Callable[[], str]) -> None:
        self._credential = credential
        self._tenant = tenant

    def details(self, call: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(call.metadata or ()))
        if metadata.get("authorization") is None:
            metadata["authorization"] = f"Bearer {self._credential}"
            tenant = self._tenant()
            if tenant and metadata.get(TENANT_METADATA) is None:
                metadata[TENANT_METADATA] = tenant
        return grpc.aio.ClientCallDetails(call.method, call.timeout, metadata, call.credentials,
                                          call.wait_for_ready)


class _UnaryUnary(_BearerMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self.details(client_call_details), request)


class _UnaryStream(_BearerMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self.details(client_call_details), request)


class _StreamUnary(_BearerMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self.details(client_call_details), request_iterator)


class _StreamStream(_BearerMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(self.details(client_call_details), request_iterator)


def bearer_client_interceptors(credential: str, tenant: Callable[[], str] = _tenant_of_current_call
                               ) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding `authorization: Bearer <credential>` (and the acting tenant) to every kind of call."""
    return [cls(credential, tenant) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def internal_client_interceptors(settings: Settings) -> list[grpc.aio.ClientInterceptor]:
    """What a component's channels to other components carry (none while authentication is off)."""
    if not settings.auth_enabled:
        return []
    return bearer_client_interceptors(internal_credential(settings))
