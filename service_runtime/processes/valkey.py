"""A local Valkey (Redis-compatible) server for `make run` and the tests."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import ManagedProcess, free_port
from .binaries import valkey_server_binary

__all__ = ["ValkeyServer"]


class ValkeyServer:
    """`valkey-server` on 127.0.0.1 only, its files under `data_dir`.

    persistent=False: nothing is written to disk (a cache/test server). persistent=True: append-only file
    in `data_dir`, so stopping and starting again on the same directory keeps the data.
    """

    HOST = "127.0.0.1"

    def __init__(
        self,
        port: int | None,
        data_dir: str | os.PathLike[str],
        persistent: bool = False,
        password: str | None = None,
        *,
        appendfsync: str = "everysec",
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.port = port if port is not None else free_port(self.HOST)
        self.data_dir = Path(data_dir)
        self.persistent = persistent
        self.password = password
        self.appendfsync = appendfsync
        self.log_path = Path(log_path) if log_path is not None else self.data_dir / "valkey.log"
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.HOST}:{self.port}/0"

    def argv(self) -> list[str]:
        args = [
            str(valkey_server_binary()),
            "--port", str(self.port),
            # Loopback only: this server has no TLS and, by default, no password.
            "--bind", self.HOST,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            # Empty logfile = stdout, which ManagedProcess appends to log_path.
            "--logfile", "",
            # No RDB snapshots either way: the AOF is the persistence we want, and snapshots of a
            # throwaway server would only cost time and disk.
            "--save", "",
        ]  # fmt: skip
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def client(self, *, decode_responses: bool = False, socket_timeout: float = 5.0) -> redis.Redis:
        """A synchronous client for this server (callers close it)."""
        return redis.Redis(
            host=self.HOST,
            port=self.port,
            password=self.password,
            decode_responses=decode_responses,
            socket_connect_timeout=socket_timeout,
            socket_timeout=socket_timeout,
        )

    def _ping(self) -> bool:
        # One attempt per probe, short timeouts: redis-py's default retries with backoff on connection
        # errors would stretch each probe to seconds. A server still loading its AOF answers LOADING,
        # which raises and counts as "not ready".
        with redis.Redis(
            host=self.HOST,
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        ) as client:
            return bool(client.ping())

    def start(self, timeout: float = 15.0) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(self.argv(), log_path=self.log_path, name=f"valkey:{self.port}")
        self.process.start_and_wait(self._ping, timeout)
        return self

    def stop(self, grace: float = 10.0) -> None:
        # SIGTERM makes Valkey flush and fsync the AOF before exiting.
        if self.process is not None:
            self.process.stop(grace)

    def restart(self, timeout: float = 15.0) -> Self:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
