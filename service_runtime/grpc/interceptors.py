"""The one server interceptor chain every service uses.

Order, outermost first: [OpenTelemetry when on] → RequestContext (ids, access log, metrics) → [auth, issue 7] →
ErrorMapping (domain errors → google.rpc.Status; anything unexpected → an opaque INTERNAL and a logged traceback).
ErrorMapping sits innermost so that the outer interceptors observe the final status code it set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from grpc_interceptor import AsyncServerInterceptor

from service_runtime.errors import Reason, ServiceError, not_implemented
from service_runtime.errors.status import to_grpc_status
from service_runtime.telemetry.context import error_reason_var, new_request_id, request_id_var, rpc_method_var
from service_runtime.telemetry.metrics import RpcMetrics

log = logging.getLogger("comfymesh.rpc")
# Probes and debugging tools call these constantly; they are measured but not access-logged.
QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _is_stream(value: Any) -> bool:
    return hasattr(value, "__aiter__")


class ErrorMappingInterceptor(AsyncServerInterceptor):
    """Turns exceptions into typed statuses; the only place that decides what a caller sees of a failure."""

    async def intercept(self, method: Callable[..., Any], request_or_iterator: Any,
                        context: grpc.aio.ServicerContext[Any, Any], method_name: str) -> Any:
        try:
            response = method(request_or_iterator, context)
            if not _is_stream(response):
                return await response
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            await self._abort(exc, context, method_name)
        return self._guard_stream(response, context, method_name)

    async def _guard_stream(self, stream: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any],
                            method_name: str) -> AsyncIterator[Any]:
        try:
            async for item in stream:
                yield item
        except Exception as exc:  # noqa: BLE001
            await self._abort(exc, context, method_name)

    @staticmethod
    async def _abort(exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method_name: str) -> None:
        if isinstance(exc, NotImplementedError):
            # Generated servicer bases set UNIMPLEMENTED and raise this for RPCs a service does not serve yet.
            error = not_implemented(method_name.rsplit("/", 1)[-1])
        elif isinstance(exc, grpc.aio.AbortError) or context.code() not in (None, grpc.StatusCode.OK):
            raise exc  # a handler already aborted with its own status
        elif isinstance(exc, ServiceError):
            error = exc
        else:
            # The traceback goes to the log with the request id; the caller gets an opaque message and the id.
            request_id = request_id_var.get()
            log.exception("unexpected error in %s", method_name)
            error = ServiceError(grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR,
                                 "internal error; quote the request_id when reporting it",
                                 {"request_id": request_id} if request_id else {})
        error_reason_var.set(str(error.reason))
        # set_code first: the OpenTelemetry server interceptor wraps the context and records the span's status from
        # set_code/abort, but not from abort_with_status.
        context.set_code(error.code)
        await context.abort_with_status(to_grpc_status(error))


class RequestContextInterceptor(AsyncServerInterceptor):
    """Binds the request id (from `x-request-id`, set by Envoy, or a new one), logs and measures every RPC."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    async def intercept(self, method: Callable[..., Any], request_or_iterator: Any,
                        context: grpc.aio.ServicerContext[Any, Any], method_name: str) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        request_id = str(metadata.get("x-request-id") or new_request_id())
        request_id_var.set(request_id)
        rpc_method_var.set(method_name)
        started = time.perf_counter()
        try:
            response = method(request_or_iterator, context)
            if not _is_stream(response):
                result = await response
                self._finish(context, method_name, started)
                return result
        except BaseException:
            self._finish(context, method_name, started)
            raise
        return self._measure_stream(response, context, method_name, started)

    async def _measure_stream(self, stream: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any],
                              method_name: str, started: float) -> AsyncIterator[Any]:
        try:
            async for item in stream:
                yield item
        finally:
            self._finish(context, method_name, started)

    def _finish(self, context: grpc.aio.ServicerContext[Any, Any], method_name: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        code = context.code() or grpc.StatusCode.OK
        if not isinstance(code, grpc.StatusCode):  # aio reports the code as an int in some paths
            code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        reason = error_reason_var.get()
        self._metrics.observe(method_name, code.name, elapsed, reason)
        if not method_name.startswith(QUIET_PREFIXES):
            level = logging.INFO if code == grpc.StatusCode.OK else logging.WARNING
            log.log(level, "rpc %s %s", method_name, code.name,
                    extra={"grpc_code": code.name, "reason": reason, "duration_ms": round(elapsed * 1000, 3)})


def default_interceptors(metrics: RpcMetrics, tracing: list[grpc.aio.ServerInterceptor],
                         auth: list[grpc.aio.ServerInterceptor] | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The chain in its fixed order (see the module docstring)."""
    return [*tracing, RequestContextInterceptor(metrics), *(auth or []), ErrorMappingInterceptor()]
