"""Envoy: validating a rendered config, and running it as a managed process."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from .base import ManagedProcess
from .binaries import envoy_binary

__all__ = ["EnvoyConfigError", "EnvoyProcess", "validate_envoy_config"]


_LOG_LINE = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(?:critical|error)\]\[[^\]]*\] \[[^\]]*\] (.*)$", re.MULTILINE)


class EnvoyConfigError(ValueError):
    """Envoy rejected a configuration; the message is Envoy's own."""


def validate_envoy_config(path: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
    """Run `envoy --mode validate -c path`; raise `EnvoyConfigError` with Envoy's message if it fails.

    Validation parses the whole bootstrap and instantiates listeners/clusters without binding sockets or
    contacting upstreams, so it is safe to run next to live Envoys.
    """
    argv = [
        str(envoy_binary()),
        "--mode", "validate",
        "-c", os.fspath(path),
        # Errors only: the message we want is a `critical` line; info lines would bury it.
        "--log-level", "error",
        "--disable-hot-restart",
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        # Envoy's lines look like "[time][tid][critical][main] [file:line] error initializing ...": keep
        # the text after the source location, which is the actual reason.
        reasons = [m.group(1) for m in _LOG_LINE.finditer(output)]
        message = "\n".join(reasons) or output or f"envoy exited with status {result.returncode}"
        raise EnvoyConfigError(f"invalid Envoy config {os.fspath(path)}: {message}")


class EnvoyProcess:
    """One Envoy running `config_path`; ready when its admin `/ready` answers 200 `LIVE`.

    The config must put the admin listener on 127.0.0.1:`admin_port`.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        admin_port: int,
        log_path: str | os.PathLike[str],
        base_id: int | None = None,
        *,
        concurrency: int | None = None,
        log_level: str = "info",
    ) -> None:
        self.config_path = Path(config_path)
        self.admin_port = admin_port
        self.log_path = Path(log_path)
        # Several Envoys share a machine (tests in parallel with `make run`). Hot restart is what uses the
        # shared-memory region named by the base id; we never hot-restart, so it is disabled, and the base
        # id is still made unique (the admin port is) so nothing can clash even if hot restart is re-enabled.
        self.base_id = base_id if base_id is not None else admin_port
        self.concurrency = concurrency
        self.log_level = log_level
        self.process: ManagedProcess | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def argv(self) -> list[str]:
        args = [
            str(envoy_binary()),
            "-c", str(self.config_path),
            "--base-id", str(self.base_id),
            "--disable-hot-restart",
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        return args

    def _ready(self) -> bool:
        response = httpx.get(f"{self.admin_url}/ready", timeout=1.0, trust_env=False)
        return response.status_code == 200 and response.text.strip() == "LIVE"

    def start(self, timeout: float = 30.0) -> Self:
        self.process = ManagedProcess(self.argv(), log_path=self.log_path, name=f"envoy:{self.admin_port}")
        self.process.start_and_wait(self._ready, timeout)
        return self

    def stop(self, grace: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(grace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
