"""Running a real server as a child process: ports, start, readiness, stop.

Both `make run` (the launcher) and the test fixtures start real servers (Valkey, SeaweedFS, Envoy) as
child processes. This module holds the parts they share:

* `free_port` picks a port the OS says is free right now;
* `ManagedProcess` starts a command in its own process group with its output appended to a log file,
  waits until a readiness probe succeeds (polling with a short backoff, never a fixed sleep), and stops
  the whole group: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "GRPC_PORT_OFFSET",
    "ManagedProcess",
    "ProcessStartError",
    "free_port",
    "free_port_with_grpc",
]

# SeaweedFS (and some other Go servers) derive a gRPC port from an HTTP port by adding 10000.
GRPC_PORT_OFFSET = 10000

# Ports handed out by this process. Between `free_port()` returning and the server binding the port, the
# kernel may hand the same port to the next `bind(0)`; remembering what we gave out avoids giving one port
# to two servers started by the same launcher or test session.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()

# Readiness polling: start fast (most servers are up within tens of milliseconds) and back off so a slow
# start does not burn a CPU.
_FIRST_DELAY_S = 0.02
_MAX_DELAY_S = 0.2


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _claim(host: str, accept: Callable[[int], bool]) -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        with _handed_out_lock:
            if port in _handed_out or not accept(port):
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"could not find a free port on {host}")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` now (the OS picks it; it is never returned twice here)."""
    return _claim(host, lambda _port: True)


def free_port_with_grpc(host: str = "127.0.0.1", offset: int = GRPC_PORT_OFFSET) -> int:
    """Return a free port `p` such that `p + offset` is free too (SeaweedFS's gRPC port convention)."""

    def accept(port: int) -> bool:
        grpc_port = port + offset
        if grpc_port > 65535 or grpc_port in _handed_out or not _port_is_free(host, grpc_port):
            return False
        _handed_out.add(grpc_port)
        return True

    return _claim(host, accept)


class ProcessStartError(RuntimeError):
    """A managed process exited or did not become ready in time; the message ends with its log tail."""


def _delays() -> Iterator[float]:
    delay = _FIRST_DELAY_S
    while True:
        yield delay
        delay = min(delay * 1.5, _MAX_DELAY_S)


# Processes started and not yet stopped. A strong reference on purpose: a running child stays owned until
# `stop()` even if the caller dropped it (a test that failed half-way), and is stopped when the interpreter
# exits (a test run interrupted, a launcher crashing) so no server outlives its owner.
_live: set[ManagedProcess] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for proc in list(_live):
        proc.stop(grace=2.0)


class ManagedProcess:
    """One command run in its own process group, its output appended to `log_path`.

    Use `start()`, then `wait_ready(probe, timeout)`, then `stop()`; or `with ManagedProcess(...) as p:`
    (start on enter, stop on exit).
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: str | os.PathLike[str],
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv: list[str] = [os.fspath(a) for a in argv]
        self.log_path = Path(log_path)
        self.name = name or Path(self.argv[0]).name
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._stopped = False

    # -- state ---------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has exited (negative: killed by that signal), else None."""
        return self._popen.poll() if self._popen is not None else None

    @property
    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log file (what the error messages show)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                data = fh.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    # -- start ---------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self.is_running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        # A previous run that exited by itself may have left children in its group: clean up first.
        self.stop()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so a restart keeps the previous run's output for post-mortems.
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                # A new session makes the child the leader of its own process group, so `stop()` can signal
                # everything it spawned and a Ctrl-C in the terminal does not hit it before we stop it.
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    cwd=self._cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProcessStartError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        # The child holds its own copy of the log descriptor; ours is closed by the `with`.
        self._stopped = False
        _live.add(self)
        return self

    # -- readiness -----------------------------------------------------------------------------------

    def _failure(self, why: str, last_error: BaseException | None) -> ProcessStartError:
        probe = f"; last probe error: {last_error!r}" if last_error is not None else ""
        return ProcessStartError(f"{self.name} {why}{probe}\n--- last lines of {self.log_path} ---\n{self.log_tail()}")

    def _check_alive(self, last_error: BaseException | None) -> None:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        code = self._popen.poll()
        if code is not None:
            raise self._failure(f"exited with status {code} before becoming ready", last_error)

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> float:
        """Poll `probe` until it returns True; return the seconds waited.

        A probe that raises counts as "not ready yet" (connection refused is the usual answer while a
        server starts). Fails fast with `ProcessStartError`, including the log tail, when the process exits
        or `timeout` seconds pass.
        """
        start = time.monotonic()
        deadline = start + timeout
        last_error: BaseException | None = None
        for delay in _delays():
            self._check_alive(last_error)
            try:
                if probe():
                    return time.monotonic() - start
            except Exception as exc:  # noqa: BLE001 - any probe failure means "not ready yet"
                last_error = exc
            self._check_alive(last_error)
            if time.monotonic() >= deadline:
                raise self._failure(f"not ready after {timeout:.1f}s", last_error)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        raise AssertionError("unreachable")

    # A `timeout` argument rather than `asyncio.timeout()` around the call: on expiry we raise with the
    # process log tail and the last probe error, which a cancelled await could not report.
    async def async_wait_ready(self, probe: Callable[[], Awaitable[bool]], timeout: float) -> float:  # noqa: ASYNC109
        """`wait_ready` for an async probe, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        last_error: BaseException | None = None
        for delay in _delays():
            self._check_alive(last_error)
            try:
                if await probe():
                    return loop.time() - start
            except Exception as exc:  # noqa: BLE001 - any probe failure means "not ready yet"
                last_error = exc
            self._check_alive(last_error)
            if loop.time() >= deadline:
                raise self._failure(f"not ready after {timeout:.1f}s", last_error)
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        raise AssertionError("unreachable")

    # -- stop ----------------------------------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        # The group id is the leader's pid (start_new_session). While any member of the group lives, the
        # kernel cannot reuse that number, so this reaches only our processes. Once the group is empty the
        # number could eventually go to a new group leader, which is why `stop()` signals only once.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def start_and_wait(self, probe: Callable[[], bool], timeout: float, *, failure_grace: float = 2.0) -> Self:
        """start() then wait_ready(); a process that never becomes ready is stopped before the error propagates."""
        self.start()
        try:
            self.wait_ready(probe, timeout)
        except BaseException:
            self.stop(grace=failure_grace)
            raise
        return self

    def send_signal(self, sig: signal.Signals) -> None:
        """Signals the leader only (e.g. SIGTERM to observe a graceful drain); `stop()` is the way to end it."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit on its own; raises subprocess.TimeoutExpired after `timeout` seconds."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.wait(timeout=timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to `grace` seconds, then SIGKILL it. Idempotent.

        Returns the exit status (None if never started).
        """
        popen = self._popen
        if popen is None:
            return None
        if self._stopped:
            return popen.returncode
        self._stopped = True
        _live.discard(self)
        if popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait()
        # Children that outlived the leader (or ignored SIGTERM) are still in the group: kill them too.
        self._signal_group(signal.SIGKILL)
        return popen.returncode

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else f"returncode={self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"
