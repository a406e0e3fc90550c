"""Executor inputs against real servers: an HTTP server on 127.0.0.1 (in a thread of the test) and SeaweedFS S3."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import pytest

from gpu_executor.io import url_guard
from gpu_executor.io.inputs import InputSpec, materialize_inputs
from service_runtime.errors import Reason, ServiceError
from service_runtime.object_store import ObjectStore
from service_runtime.processes import SeaweedFSServer

pytestmark = pytest.mark.integration

FILE_BODY = os.urandom(300_000)
STREAM_CHUNK = 64 << 10
STREAM_TOTAL = 64 << 20  # what /endless would send if nobody stopped reading


@dataclass
class ServerLog:
    paths: list[str] = field(default_factory=list)
    stream_aborted: threading.Event = field(default_factory=threading.Event)
    stream_completed: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    log: ServerLog  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.log.paths.append(self.path)
        if self.path == "/file.bin":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(FILE_BODY)))
            self.end_headers()
            self.wfile.write(FILE_BODY)
        elif self.path == "/endless":  # no Content-Length: the size is only known by counting
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(STREAM_TOTAL // STREAM_CHUNK):
                    self.wfile.write(b"e" * STREAM_CHUNK)
                self.stream_completed()
            except OSError:  # the client hung up
                self.log.stream_aborted.set()
        elif self.path == "/redirect-local":
            self.send_response(302)
            self.send_header("Location", "/file.bin")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/redirect-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = b"not found"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def stream_completed(self) -> None:
        self.log.stream_completed.set()


@dataclass
class LocalServer:
    base_url: str
    log: ServerLog


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    log = ServerLog()
    handler = type("BoundHandler", (Handler,), {"log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield LocalServer(f"http://127.0.0.1:{server.server_address[1]}", log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def fetch_url(target: Path, url: str, *, allow_private_urls: bool, sha256: str = "",
                    max_url_bytes: int = 1 << 20) -> dict[str, Path]:
    return await materialize_inputs([InputSpec("input.bin", url=url, sha256=sha256)], target, store=None,
                                    inputs_bucket="inputs", max_inline_bytes=1024, max_url_bytes=max_url_bytes,
                                    url_timeout=10.0, allow_private_urls=allow_private_urls)


def files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


async def test_url_fetch_with_private_urls_allowed_verifies_sha256(http_server: LocalServer, tmp_path: Path) -> None:
    paths = await fetch_url(tmp_path / "in", f"{http_server.base_url}/file.bin", allow_private_urls=True,
                            sha256=hashlib.sha256(FILE_BODY).hexdigest())
    assert paths["input.bin"].read_bytes() == FILE_BODY
    assert files_in(tmp_path / "in") == [paths["input.bin"]]


async def test_url_fetch_follows_a_checked_redirect(http_server: LocalServer, tmp_path: Path) -> None:
    paths = await fetch_url(tmp_path / "in", f"{http_server.base_url}/redirect-local", allow_private_urls=True)
    assert paths["input.bin"].read_bytes() == FILE_BODY
    assert http_server.log.paths == ["/redirect-local", "/file.bin"]


async def test_url_fetch_sha256_mismatch_leaves_no_file(http_server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch_url(tmp_path / "in", f"{http_server.base_url}/file.bin", allow_private_urls=True,
                        sha256=hashlib.sha256(b"something else").hexdigest())
    assert caught.value.reason == Reason.INPUT_INVALID
    assert files_in(tmp_path / "in") == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_is_refused_when_private_urls_are_not_allowed(http_server: LocalServer, tmp_path: Path,
                                                                     host: str) -> None:
    url = http_server.base_url.replace("127.0.0.1", host) + "/file.bin"
    with pytest.raises(ServiceError) as caught:
        await fetch_url(tmp_path / "in", url, allow_private_urls=False)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.URL_NOT_ALLOWED)
    assert error.metadata["input"] == "input.bin"
    assert error.metadata["address_kind"] == "loopback"
    assert error.field_violations[0].field == "inputs[0].url"
    assert http_server.log.paths == []  # never contacted
    assert files_in(tmp_path / "in") == []


async def test_redirect_to_the_metadata_endpoint_is_refused_even_with_private_urls(http_server: LocalServer,
                                                                                   tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch_url(tmp_path / "in", f"{http_server.base_url}/redirect-metadata", allow_private_urls=True)
    assert caught.value.reason == Reason.URL_NOT_ALLOWED
    assert caught.value.metadata["address_kind"] == "cloud instance metadata"
    assert caught.value.metadata["redirected_from"] == f"{http_server.base_url}/redirect-metadata"


async def test_stream_over_the_limit_is_aborted_and_leaves_no_file(http_server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch_url(tmp_path / "in", f"{http_server.base_url}/endless", allow_private_urls=True,
                        max_url_bytes=1 << 20)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.URL_FETCH_FAILED)
    assert error.metadata["limit_bytes"] == str(1 << 20)
    assert error.metadata["input"] == "input.bin"
    assert files_in(tmp_path / "in") == []  # neither the file nor its temporary part
    # The connection was dropped: the server could not send its 64 MiB.
    assert http_server.log.stream_aborted.wait(10)
    assert not http_server.log.stream_completed.is_set()


async def test_not_found_is_a_fetch_failure_with_the_status(http_server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch_url(tmp_path / "in", f"{http_server.base_url}/missing.png", allow_private_urls=True)
    error = caught.value
    assert error.reason == Reason.URL_FETCH_FAILED
    assert error.metadata["status"] == "404"
    assert error.metadata["input"] == "input.bin"
    assert files_in(tmp_path / "in") == []


# -- https: pinned to the vetted address, TLS still verified against the URL's host name -------------------


@dataclass
class TlsServer:
    port: int
    ca_file: Path
    server_names: list[str | None]
    host_headers: list[str]


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[TlsServer]:
    """An HTTPS server on 127.0.0.1 whose certificate names only `files.example`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=files.example", "-addext", "subjectAltName=DNS:files.example", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    server_names: list[str | None] = []
    host_headers: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)  # type: ignore[assignment,func-returns-value]

    class TlsHandler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            host_headers.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", str(len(FILE_BODY)))
            self.end_headers()
            self.wfile.write(FILE_BODY)

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the refused handshake of the wrong-name test

    server = QuietServer(("127.0.0.1", 0), TlsHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-https-server", daemon=True)
    thread.start()
    try:
        yield TlsServer(server.server_address[1], cert, server_names, host_headers)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_https_is_pinned_with_the_original_sni_and_host(https_server: TlsServer, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(url_guard, "resolve_host", lambda host, port: ["127.0.0.1"])
    verify = ssl.create_default_context(cafile=str(https_server.ca_file))
    async with httpx.AsyncClient(verify=verify, trust_env=False) as client:
        paths = await materialize_inputs(
            [InputSpec("tls.bin", url=f"https://files.example:{https_server.port}/file.bin",
                       sha256=hashlib.sha256(FILE_BODY).hexdigest())],
            tmp_path / "in", store=None, inputs_bucket="inputs", max_inline_bytes=0, max_url_bytes=1 << 20,
            url_timeout=10.0, allow_private_urls=True, http_client=client)
    assert paths["tls.bin"].read_bytes() == FILE_BODY
    assert https_server.server_names == ["files.example"]
    assert https_server.host_headers == [f"files.example:{https_server.port}"]


async def test_https_certificate_is_checked_against_the_url_host_not_the_ip(https_server: TlsServer,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(url_guard, "resolve_host", lambda host, port: ["127.0.0.1"])
    verify = ssl.create_default_context(cafile=str(https_server.ca_file))
    async with httpx.AsyncClient(verify=verify, trust_env=False) as client:
        with pytest.raises(ServiceError) as caught:
            await materialize_inputs(
                [InputSpec("tls.bin", url=f"https://impostor.example:{https_server.port}/file.bin")],
                tmp_path / "in", store=None, inputs_bucket="inputs", max_inline_bytes=0, max_url_bytes=1 << 20,
                url_timeout=10.0, allow_private_urls=True, http_client=client)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.URL_FETCH_FAILED)
    assert "certificate" in caught.value.message and "impostor.example" in caught.value.message
    assert https_server.host_headers == []
    assert files_in(tmp_path / "in") == []


# -- object keys from SeaweedFS -------------------------------------------------------------------------------


@pytest.fixture
async def store(seaweedfs: SeaweedFSServer) -> ObjectStore:
    return ObjectStore(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)


@pytest.fixture
async def bucket(store: ObjectStore) -> str:
    name = f"inputs-{uuid.uuid4().hex[:12]}"
    await store.ensure_bucket(name)
    return name


async def test_object_key_inputs_are_streamed_into_place(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    big = os.urandom(3 * (1 << 20) + 12345)  # several download chunks
    await store.put_bytes(bucket, "uploads/abc/photo.png", big, "image/png")
    await store.put_bytes(bucket, "uploads/abc/mask.png", b"mask", "image/png")
    paths = await materialize_inputs(
        [InputSpec("photo.png", object_key="uploads/abc/photo.png", sha256=hashlib.sha256(big).hexdigest()),
         InputSpec("masks/mask.png", object_key="uploads/abc/mask.png"),
         InputSpec("inline.txt", data=b"inline")],
        tmp_path / "in", store=store, inputs_bucket=bucket, max_inline_bytes=1024, max_url_bytes=1024,
        url_timeout=5.0, allow_private_urls=False)
    assert paths["photo.png"].read_bytes() == big
    assert paths["masks/mask.png"].read_bytes() == b"mask"
    assert paths["inline.txt"].read_bytes() == b"inline"
    assert len(files_in(tmp_path / "in")) == 3


async def test_missing_object_key_is_typed(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    await store.put_bytes(bucket, "present.png", b"here")
    with pytest.raises(ServiceError) as caught:
        await materialize_inputs(
            [InputSpec("present.png", object_key="present.png"), InputSpec("gone.png", object_key="nope/gone.png")],
            tmp_path / "in", store=store, inputs_bucket=bucket, max_inline_bytes=1024, max_url_bytes=1024,
            url_timeout=5.0, allow_private_urls=False)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, Reason.INPUT_INVALID)
    assert error.metadata["input"] == "gone.png" and error.metadata["object_key"] == "nope/gone.png"
    assert files_in(tmp_path / "in") == []  # the one already written was removed again
