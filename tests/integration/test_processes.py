"""Real server processes: Valkey, SeaweedFS, Envoy, and the ManagedProcess they run on."""

from __future__ import annotations

import io
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import redis
from minio import Minio
from minio.error import S3Error
from redis.backoff import NoBackoff
from redis.retry import Retry

from service_runtime.processes import (
    GRPC_PORT_OFFSET,
    EnvoyConfigError,
    EnvoyProcess,
    ManagedProcess,
    ProcessStartError,
    SeaweedFSServer,
    ValkeyServer,
    free_port,
    free_port_with_grpc,
    validate_envoy_config,
)

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_gone(pid: int, timeout: float = 3.0) -> None:
    # A killed grandchild is reaped by init asynchronously; give it a moment.
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.02)


# -- ports -------------------------------------------------------------------------------------------


def test_free_ports_are_distinct_and_grpc_pair_is_free() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    port = free_port_with_grpc()
    assert port not in ports
    assert port + GRPC_PORT_OFFSET <= 65535


# -- ManagedProcess ----------------------------------------------------------------------------------


def test_wait_ready_fails_fast_with_log_tail_when_process_exits(tmp_path: Path) -> None:
    proc = ManagedProcess(["sh", "-c", "echo 'fatal: boom-marker'; exit 3"], log_path=tmp_path / "p.log", name="dies")
    proc.start()
    started = time.monotonic()
    with pytest.raises(ProcessStartError) as info:
        proc.wait_ready(lambda: False, timeout=30)
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert "dies exited with status 3" in message
    assert "boom-marker" in message
    assert proc.returncode == 3
    assert not proc.is_running
    proc.stop()  # idempotent on an exited process


def test_wait_ready_times_out_with_probe_error(tmp_path: Path) -> None:
    def probe() -> bool:
        raise ConnectionRefusedError("nobody home")

    with ManagedProcess(["sleep", "30"], log_path=tmp_path / "p.log") as proc:
        started = time.monotonic()
        with pytest.raises(ProcessStartError, match=r"not ready after 0\.3s.*nobody home"):
            proc.wait_ready(probe, timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert proc.is_running
    assert not proc.is_running


def test_wait_ready_returns_once_probe_succeeds(tmp_path: Path) -> None:
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    with ManagedProcess(["sleep", "30"], log_path=tmp_path / "p.log") as proc:
        assert proc.wait_ready(probe, timeout=5) < 1
    assert calls == 3


@pytest.mark.asyncio
async def test_async_wait_ready(tmp_path: Path) -> None:
    marker = tmp_path / "ready"

    async def probe() -> bool:
        return marker.exists()

    with ManagedProcess(["sh", "-c", f"sleep 0.1; touch {marker}; sleep 30"], log_path=tmp_path / "p.log") as p:
        assert await p.async_wait_ready(probe, timeout=5) < 3


def test_stop_kills_process_ignoring_sigterm_and_its_children(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    log = tmp_path / "p.log"
    # sh ignores SIGTERM, and so does its background child (ignored dispositions survive fork and exec).
    script = f"trap '' TERM; sleep 60 & echo $! > {child_pid_file}; wait"
    proc = ManagedProcess(["sh", "-c", script], log_path=log).start()
    # Ready once the child's pid is written (the trap is set before the child starts).
    proc.wait_ready(lambda: child_pid_file.exists() and child_pid_file.read_text().endswith("\n"), timeout=5)
    child_pid = int(child_pid_file.read_text())
    assert proc.pid is not None
    leader = proc.pid

    started = time.monotonic()
    assert proc.stop(grace=0.3) == -signal.SIGKILL
    assert time.monotonic() - started < 2
    assert_gone(leader)
    assert_gone(child_pid)
    assert proc.stop() == -signal.SIGKILL  # idempotent


def test_stop_terminates_gracefully_first(tmp_path: Path) -> None:
    with ManagedProcess(["sleep", "30"], log_path=tmp_path / "p.log") as proc:
        pid = proc.pid
    assert proc.returncode == -signal.SIGTERM
    assert pid is not None
    assert_gone(pid)


def test_start_error_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ProcessStartError, match="no-such-binary"):
        ManagedProcess([str(tmp_path / "no-such-binary")], log_path=tmp_path / "p.log").start()


# -- Valkey ------------------------------------------------------------------------------------------


def test_valkey_persistent_restart_keeps_data_and_leaves_no_process(tmp_path: Path) -> None:
    server = ValkeyServer(None, tmp_path / "valkey", persistent=True)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    server.start()
    try:
        assert server.process is not None
        first_pid = server.process.pid
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            client.set("greeting", "hello")
        server.restart()
        assert server.process.pid != first_pid
        assert first_pid is not None
        assert_gone(first_pid)
        with redis.Redis.from_url(server.url) as client:
            assert client.get("greeting") == b"hello"
    finally:
        server.stop()
    assert server.process is not None
    assert server.process.pid is not None
    assert_gone(server.process.pid)
    assert (tmp_path / "valkey" / "appendonlydir").is_dir()


def test_valkey_ephemeral_with_password(tmp_path: Path) -> None:
    with ValkeyServer(None, tmp_path, password="s3cret/pw") as server:
        assert server.url == f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/0"
        anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with server.client() as client:
            client.set("k", "v")
        server.restart()
        with server.client() as client:
            assert client.get("k") is None  # not persistent: nothing survives
    assert not any((tmp_path / "appendonlydir").glob("*"))


def test_redis_server_fixture_restarts(redis_server: ValkeyServer) -> None:
    with redis_server.client() as client:
        client.rpush("queue", "job-1")
    redis_server.stop()
    redis_server.start()
    with redis_server.client() as client:
        assert client.lrange("queue", 0, -1) == [b"job-1"]


# -- SeaweedFS ---------------------------------------------------------------------------------------


def test_seaweedfs_bucket_put_get(seaweedfs: SeaweedFSServer) -> None:
    client = Minio(seaweedfs.endpoint, access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key, secure=False)
    client.make_bucket("processes-test")
    client.put_object("processes-test", "dir/hello.txt", io.BytesIO(b"hello world"), 11)
    response = client.get_object("processes-test", "dir/hello.txt")
    try:
        assert response.read() == b"hello world"
    finally:
        response.close()
        response.release_conn()
    assert "processes-test" in [b.name for b in client.list_buckets()]


@pytest.mark.parametrize(
    ("access_key", "secret_key", "code"),
    [
        (None, "wrong-secret", "SignatureDoesNotMatch"),
        ("NOSUCHKEY", "wrong-secret", "InvalidAccessKeyId"),
        ("", "", "AccessDenied"),  # anonymous
    ],
)
def test_seaweedfs_refuses_wrong_credentials(
    seaweedfs: SeaweedFSServer, access_key: str | None, secret_key: str, code: str
) -> None:
    client = Minio(
        seaweedfs.endpoint,
        access_key=seaweedfs.access_key if access_key is None else access_key,
        secret_key=secret_key,
        secure=False,
    )
    with pytest.raises(S3Error) as info:
        client.list_buckets()
    assert info.value.code == code


# -- Envoy -------------------------------------------------------------------------------------------


HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def envoy_config(admin_port: int, listener_port: int | str) -> str:
    return textwrap.dedent(
        f"""\
        admin:
          address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
        static_resources:
          listeners:
          - name: direct
            address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
            filter_chains:
            - filters:
              - name: envoy.filters.network.http_connection_manager
                typed_config:
                  "@type": {HCM_TYPE}
                  stat_prefix: ingress
                  route_config:
                    virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                      - match: {{prefix: "/"}}
                        direct_response: {{status: 200, body: {{inline_string: "hello from envoy"}}}}
                  http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
        """
    )


def test_validate_envoy_config(tmp_path: Path, envoy_binary: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(envoy_config(free_port(), free_port()))
    validate_envoy_config(good)

    bad = tmp_path / "bad.yaml"
    bad.write_text(envoy_config(free_port(), "not-a-port"))
    with pytest.raises(EnvoyConfigError) as info:
        validate_envoy_config(bad)
    message = str(info.value)
    assert "error initializing configuration" in message  # Envoy's own words
    assert "not-a-port" in message
    assert "[critical]" not in message  # log prefix stripped


def test_envoy_process_serves_direct_response(tmp_path: Path, envoy_binary: Path) -> None:
    admin_port, listener_port = free_port(), free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy_config(admin_port, listener_port))
    envoy = EnvoyProcess(config, admin_port, tmp_path / "envoy.log", concurrency=1)
    with envoy:
        response = httpx.get(f"http://127.0.0.1:{listener_port}/anything", trust_env=False)
        assert response.status_code == 200
        assert response.text == "hello from envoy"
        assert envoy.process is not None
        pid = envoy.process.pid
    assert pid is not None
    assert_gone(pid)
    assert "starting main dispatch loop" in (tmp_path / "envoy.log").read_text()


def test_grpcurl_binary_runs(grpcurl_binary: Path) -> None:
    out = subprocess.run([grpcurl_binary, "-version"], capture_output=True, text=True, check=True, timeout=10)
    assert "grpcurl" in out.stdout + out.stderr
