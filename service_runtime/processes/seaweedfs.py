"""A local SeaweedFS (`weed mini`: master + volume + filer + S3 in one process) for `make run` and tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import urllib3
from minio import Minio

from .base import GRPC_PORT_OFFSET, ManagedProcess, free_port_with_grpc
from .binaries import weed_binary

__all__ = ["SeaweedFSServer"]

# Unix socket paths must fit in sockaddr_un.sun_path (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


class SeaweedFSServer:
    """`weed mini` bound to 127.0.0.1, every port chosen here, all state under `data_dir`.

    S3 requires `access_key`/`secret_key` (one admin identity); anonymous and wrong credentials are refused.
    """

    HOST = "127.0.0.1"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        access_key: str,
        secret_key: str,
        s3_port: int | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        # Every component gets an HTTP port p and a gRPC port p+10000, both checked free. We pass the gRPC
        # ports explicitly as well, but keep SeaweedFS's convention in case a component derives them.
        self.s3_port = s3_port if s3_port is not None else free_port_with_grpc(self.HOST)
        self.master_port = free_port_with_grpc(self.HOST)
        self.volume_port = free_port_with_grpc(self.HOST)
        self.filer_port = free_port_with_grpc(self.HOST)
        self.admin_port = free_port_with_grpc(self.HOST)
        self.log_path = Path(log_path) if log_path is not None else self.data_dir / "seaweedfs.log"
        self.process: ManagedProcess | None = None
        self._socket_dir: Path | None = None

    @property
    def endpoint(self) -> str:
        """host:port, as the `minio` client wants it."""
        return f"{self.HOST}:{self.s3_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def client(self, *, timeout: float = 30.0, retries: bool = True) -> Minio:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
            retries=urllib3.Retry(total=3, backoff_factor=0.1) if retries else False,
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            http_client=http,
        )

    def _write_s3_config(self) -> Path:
        path = self.data_dir / "s3.json"
        identities = {
            "identities": [
                {
                    "name": "comfymesh",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        # Created 0600 from the start: it holds the secret key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(identities, fh)
        return path

    def _sockets_dir(self) -> Path:
        # weed mini opens unix sockets for filer and S3 (default /tmp/seaweedfs-*-<port>.sock, shared by all
        # users of the machine); keep them with the data unless that path is too long for a socket.
        if len(str(self.data_dir / "seaweedfs-filer-65535.sock")) <= _MAX_SOCKET_PATH:
            return self.data_dir
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cm-weed-"))
        return self._socket_dir

    def argv(self, s3_config: Path, socket_dir: Path) -> list[str]:
        def ports(component: str, port: int) -> list[str]:
            return [f"-{component}.port={port}", f"-{component}.port.grpc={port + GRPC_PORT_OFFSET}"]

        return [
            str(weed_binary()),
            # Global flag (before the subcommand): glog writes to stderr (our log file), not /tmp/weed.*.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir / 'data'}",
            # -ip is the address components advertise to each other; -ip.bind what they listen on.
            f"-ip={self.HOST}",
            f"-ip.bind={self.HOST}",
            *ports("master", self.master_port),
            *ports("volume", self.volume_port),
            *ports("filer", self.filer_port),
            *ports("s3", self.s3_port),
            # The admin server listens even with its UI off, so it needs ports of its own too.
            *ports("admin", self.admin_port),
            "-admin.ui=false",
            # Components we do not use: they would otherwise take fixed default ports (8181, 9101, 7333).
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            f"-s3.config={s3_config}",
            f"-filer.localSocket={socket_dir / f'seaweedfs-filer-{self.filer_port}.sock'}",
            f"-s3.localSocket={socket_dir / f'seaweedfs-s3-{self.s3_port}.sock'}",
            # No phoning home (machines here have no internet) and a fast stop.
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]

    def _list_buckets(self) -> bool:
        self.client(timeout=2.0, retries=False).list_buckets()
        return True

    def start(self, timeout: float = 60.0) -> Self:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        argv = self.argv(self._write_s3_config(), self._sockets_dir())
        # cwd = data dir: weed also reads *.toml config from its working directory; do not pick up strays.
        self.process = ManagedProcess(argv, log_path=self.log_path, name=f"seaweedfs:{self.s3_port}", cwd=self.data_dir)
        self.process.start()
        try:
            # Ready = an authenticated S3 ListBuckets succeeds (S3 gateway, IAM config and filer all up).
            self.process.wait_ready(self._list_buckets, timeout)
        except BaseException:
            self.stop(grace=2.0)
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(grace)
            self._remove_grpc_sockets()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _remove_grpc_sockets(self) -> None:
        # weed also opens unix sockets for its internal gRPC at a hard-coded /tmp/seaweedfs-<component>-grpc-
        # <port>.sock (no flag moves them) and does not always remove them on exit. They are named by our
        # ports, which no other server could hold while ours ran, so they are ours to clean up.
        components = {
            "master": self.master_port,
            "volume": self.volume_port,
            "filer": self.filer_port,
            "s3": self.s3_port,
            "admin": self.admin_port,
        }
        for component, port in components.items():
            path = Path(f"/tmp/seaweedfs-{component}-grpc-{port + GRPC_PORT_OFFSET}.sock")  # noqa: S108
            if path.is_socket():
                path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
