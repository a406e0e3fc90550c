"""Runs one or more control-plane components in a process: `python -m services.<name>` or all together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from service_runtime.auth.interceptor import auth_interceptor
from service_runtime.grpc import GrpcServer, serve_until_signalled
from service_runtime.settings import Settings, get_settings
from service_runtime.telemetry.logs import configure_logging
from services.context import AppContext
from services.registry import COMPONENTS, PUBLIC_SERVICES

log = logging.getLogger(__name__)


def build_server(settings: Settings, components: Sequence[str], port: int, name: str) -> tuple[GrpcServer, AppContext]:
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; known: {sorted(COMPONENTS)}")
    ctx = AppContext(settings)
    server = GrpcServer(settings, name, [COMPONENTS[c](ctx) for c in components], port,
                        reflection_extra=PUBLIC_SERVICES if settings.reflect_all_public_services else (),
                        auth=auth_interceptor(settings, ctx.redis, ctx.db))
    server.on_start.append(ctx.start_background)
    server.on_stop.append(ctx.close)
    return server, ctx


def run(components: Sequence[str], port: int | None = None, name: str | None = None) -> None:
    """The blocking entry point of a service process; returns after a graceful drain."""
    settings = get_settings()
    name = name or (components[0] if len(components) == 1 else "control_plane")
    configure_logging(name, settings.log_level, settings.log_format, settings.service_instance)
    port = settings.port_of(name) if port is None else port

    async def serve() -> None:
        # Built inside the running loop: aio channels and clients bind to the loop they are created in.
        server, _ = build_server(settings, components, port, name)
        await serve_until_signalled(server)

    asyncio.run(serve())
