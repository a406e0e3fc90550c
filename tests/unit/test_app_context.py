"""The process context's background loops: restarted when they fail, and stopped at close even when one of them
loses a cancellation (Python 3.11's wait_for race) or a server's shutdown never completes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from service_runtime.grpc import server as grpc_server
from service_runtime.grpc.server import GrpcServer
from service_runtime.settings import Settings
from services import context as context_module
from services.context import AppContext

pytestmark = pytest.mark.unit


def _context(tmp_path: Path) -> AppContext:
    return AppContext(Settings(home=tmp_path, metrics_port=0))


async def test_a_failing_loop_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context_module, "RESTART_BACKOFF_SECONDS", (0.0,))
    runs = 0
    third_run = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")
        third_run.set()
        await asyncio.Event().wait()

    ctx = _context(tmp_path)
    ctx.background("flaky", flaky)
    await ctx.start_background()
    async with asyncio.timeout(5):
        await third_run.wait()
    await ctx.close()
    assert runs == 3


async def test_close_stops_a_loop_that_swallows_its_first_cancellation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(context_module, "STOP_ROUND_SECONDS", 0.2)
    cancellations = 0
    running = asyncio.Event()

    async def stubborn() -> None:
        nonlocal cancellations
        running.set()
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations == 1:
                    continue  # what a lost cancellation looks like from outside: the loop runs on
                raise

    ctx = _context(tmp_path)
    ctx.background("stubborn", stubborn)
    await ctx.start_background()
    await running.wait()
    with caplog.at_level(logging.WARNING, logger="services.context"):
        async with asyncio.timeout(5):
            await ctx.close()
    assert cancellations == 2
    assert "stubborn ignored its cancellation" in caplog.text


async def test_close_gives_up_on_a_loop_that_never_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(context_module, "STOP_ROUND_SECONDS", 0.05)
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    ctx = _context(tmp_path)
    ctx.background("immortal", immortal)
    await ctx.start_background()
    await asyncio.sleep(0.02)
    with caplog.at_level(logging.ERROR, logger="services.context"):
        async with asyncio.timeout(5):
            await ctx.close()
    assert "still running after 5 cancellations: immortal" in caplog.text
    release.set()


async def test_server_stop_runs_its_cleanup_even_when_the_grpc_shutdown_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(grpc_server, "STOP_OVERRUN_SECONDS", 0.2)
    server = GrpcServer(Settings(home=tmp_path, metrics_port=0), "test", [], port=0, host="127.0.0.1")
    cleaned = asyncio.Event()

    async def cleanup() -> None:
        cleaned.set()

    server.on_stop.append(cleanup)
    await server.start()
    real = server._server
    assert real is not None

    async def never_completes(grace: float | None) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(real, "stop", never_completes)
    with caplog.at_level(logging.ERROR, logger="service_runtime.grpc.server"):
        async with asyncio.timeout(5):
            await server.stop(0.1)
    assert cleaned.is_set()
    assert "had not stopped" in caplog.text
    monkeypatch.undo()
    await real.stop(None)
