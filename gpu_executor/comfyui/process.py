"""The ComfyUI server process the executor starts and supervises.

It listens on a free loopback port (private: only this executor talks to it), with its own output, input, temp and
user directories under the executor's home and the executor's model folders through an extra model paths file.
Readiness is polled (GET /system_stats with backoff), never slept for. The process runs in a session of its own, so
a kill takes its children with it, and on Linux it is killed when the executor dies (PR_SET_PDEATHSIG, set by a
launcher that then execs ComfyUI): a crashed executor never leaves an orphaned ComfyUI holding the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from service_runtime.processes import free_port

log = logging.getLogger(__name__)
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


class ComfyStartError(RuntimeError):
    """ComfyUI exited or did not answer within the startup timeout."""


@dataclass(frozen=True)
class ComfyLayout:
    """Where a supervised ComfyUI keeps its files (all under the executor's home)."""

    root: Path

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    @property
    def user(self) -> Path:
        return self.root / "user"

    @property
    def log_file(self) -> Path:
        return self.root / "comfyui.log"

    def create(self) -> None:
        for directory in (self.output, self.input, self.temp, self.user):
            directory.mkdir(parents=True, exist_ok=True)


# Runs first in the new process, then becomes ComfyUI (execv): asks the kernel to SIGKILL it when the executor dies.
# A launcher rather than preexec_fn: running Python between fork and exec in a threaded process (gRPC's) is unsafe.
_LAUNCHER = (f"import ctypes, os, signal, sys; ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, int(signal.SIGKILL)); "
             "os.execv(sys.argv[1], sys.argv[1:])")


async def wait_until_answering(base_url: str, limit: float, process: asyncio.subprocess.Process | None = None,
                               log_file: Path | None = None) -> None:
    """Polls GET /system_stats with growing pauses until it answers 200; ComfyStartError on timeout or exit."""
    deadline = time.monotonic() + limit
    pause = FIRST_POLL_SECONDS
    async with aiohttp.ClientSession() as session:
        while True:
            if process is not None and process.returncode is not None:
                raise ComfyStartError(f"ComfyUI exited with code {process.returncode} while starting"
                                      f"{_tail(log_file)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(base_url + "/system_stats",
                                       timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                    if response.status == 200:
                        return
            if time.monotonic() + pause > deadline:
                raise ComfyStartError(f"ComfyUI did not answer at {base_url} within {limit:.0f} s{_tail(log_file)}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_POLL_SECONDS)


def _tail(log_file: Path | None, lines: int = 20) -> str:
    if log_file is None:
        return ""
    try:
        text = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "; its log ends with:\n" + "\n".join(text) if text else ""


class ComfyProcess:
    def __init__(self, checkout: Path, python: str, layout: ComfyLayout, extra_model_paths: Path,
                 extra_args: Sequence[str], startup_timeout: float) -> None:
        self.checkout = checkout
        self.python = python
        self.layout = layout
        self.extra_model_paths = extra_model_paths
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def exit_code(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    def command(self) -> list[str]:
        """ComfyUI's command line (behind the launcher on Linux)."""
        layout = self.layout
        launcher = [self.python, "-c", _LAUNCHER] if sys.platform.startswith("linux") else []
        return [*launcher, self.python, str(self.checkout / "main.py"), "--listen", "127.0.0.1",
                "--port", str(self.port), "--disable-auto-launch", "--preview-method", "auto",
                "--output-directory", str(layout.output), "--input-directory", str(layout.input),
                "--temp-directory", str(layout.temp), "--user-directory", str(layout.user),
                "--extra-model-paths-config", str(self.extra_model_paths), *self.extra_args]

    async def start(self) -> None:
        """Starts ComfyUI and returns once it answers (ComfyStartError, with its log's tail, otherwise)."""
        if not (self.checkout / "main.py").is_file():
            raise ComfyStartError(f"{self.checkout} is not a ComfyUI checkout (no main.py)")
        self.layout.create()
        self.port = free_port()
        with self.layout.log_file.open("ab") as log_handle:
            self._process = await asyncio.create_subprocess_exec(
                *self.command(), cwd=self.checkout, env=comfyui_environment(os.environ),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_handle, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        log.info("starting ComfyUI", extra={"pid": self._process.pid, "port": self.port})
        try:
            await wait_until_answering(self.base_url, self.startup_timeout, self._process, self.layout.log_file)
        except BaseException:
            await self.kill()
            raise
        log.info("ComfyUI is ready", extra={"pid": self._process.pid, "port": self.port})

    async def kill(self) -> None:
        """SIGKILLs ComfyUI and everything it started, and reaps it."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            await self.kill()


def comfyui_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment ComfyUI runs in: the executor's, less what ComfyUI must not see or must not inherit.

    - COMFYMESH_* holds the deployment secret, the executor's API key and the object store's credentials; ComfyUI
      and its custom nodes need none of them.
    - PYTHONSAFEPATH (set in the executor image) would keep main.py's own directory off sys.path, and ComfyUI imports
      its packages (comfy, nodes, ...) from there.
    """
    return {k: v for k, v in parent.items() if not k.startswith("COMFYMESH_") and k != "PYTHONSAFEPATH"}
