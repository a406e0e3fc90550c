"""Fleet membership against an in-process ExecutionService: an unreachable service is retried (never fatal),
registration then heartbeats, re-registration on known=false, drain on drain=true, deregistration on stop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc.aio
import pytest
from google.protobuf import duration_pb2, empty_pb2

from comfymesh.execution.v1 import execution_service_pb2 as xpb
from comfymesh.execution.v1 import execution_service_pb2_grpc
from comfymesh.executor.v1 import executor_service_pb2 as pb
from gpu_executor.fleet import FleetMembership, parse_labels
from service_runtime.processes import free_port
from service_runtime.settings import Settings

pytestmark = pytest.mark.unit


class Registry(execution_service_pb2_grpc.ExecutionServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.forget = False
        self.drain = False

    async def RegisterExecutor(self, request: xpb.RegisterExecutorRequest, context: Any
                               ) -> xpb.RegisterExecutorResponse:
        self.calls.append(("register", request))
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(100)
        return xpb.RegisterExecutorResponse(heartbeat_interval=interval)

    async def Heartbeat(self, request: xpb.HeartbeatRequest, context: Any) -> xpb.HeartbeatResponse:
        self.calls.append(("heartbeat", request))
        known, self.forget = not self.forget, False
        return xpb.HeartbeatResponse(known=known, drain=self.drain)

    async def DeregisterExecutor(self, request: xpb.DeregisterExecutorRequest, context: Any) -> empty_pb2.Empty:
        self.calls.append(("deregister", request))
        return empty_pb2.Empty()

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


async def serve(registry: Registry, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server(registry, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def describer(described: list[bool]) -> Any:
    async def describe(include_catalog: bool) -> pb.ExecutorDescription:
        described.append(include_catalog)
        description = pb.ExecutorDescription(executor_id="e1", state=pb.EXECUTOR_STATE_IDLE, catalog_hash="h1")
        if include_catalog:
            description.catalog.add(name="KSampler")
        return description

    return describe


async def test_membership_survives_an_unreachable_service_then_registers_heartbeats_and_deregisters() -> None:
    port = free_port()
    settings = Settings(execution_addr=f"127.0.0.1:{port}", executor_heartbeat_seconds=0.1)
    drained: list[bool] = []
    described: list[bool] = []
    member = FleetMembership(settings, "e1", "127.0.0.1:1234", {"pool": "a"}, describer(described),
                             lambda: drained.append(True))
    member.start()
    await asyncio.sleep(1.5)  # nothing listens: retried with backoff, never raised
    assert not member.registered and member._task is not None and not member._task.done()

    registry = Registry()  # type: ignore[abstract]  # only the membership RPCs
    server = await serve(registry, port)
    try:
        await until(lambda: registry.count("heartbeat") >= 2, 30)
        register = next(r for name, r in registry.calls if name == "register")
        assert (register.executor_id, register.address, dict(register.labels)) == ("e1", "127.0.0.1:1234",
                                                                                  {"pool": "a"})
        assert [d.name for d in register.description.catalog] == ["KSampler"]
        beat = next(r for name, r in registry.calls if name == "heartbeat")
        assert beat.executor_id == "e1" and not beat.description.catalog  # heartbeats leave the catalog out

        registry.forget = True
        await until(lambda: registry.count("register") == 2)
        registry.drain = True
        await until(lambda: bool(drained))

        await member.stop()
        assert registry.calls[-1][0] == "deregister" and registry.calls[-1][1].executor_id == "e1"
    finally:
        await server.stop(None)


async def test_stop_without_a_reachable_service_is_bounded() -> None:
    settings = Settings(execution_addr=f"127.0.0.1:{free_port()}")
    member = FleetMembership(settings, "e1", "127.0.0.1:1", {}, describer([]), lambda: None)
    member.start()
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await member.stop()
    assert time.monotonic() - started < 5


def test_labels_parse_and_refuse_garbage() -> None:
    assert parse_labels("") == {}
    assert parse_labels("pool=sdxl, provider=local,,zone=") == {"pool": "sdxl", "provider": "local", "zone": ""}
    with pytest.raises(ValueError, match="key=value"):
        parse_labels("pool")
    with pytest.raises(ValueError, match="key=value"):
        parse_labels("=x")
