"""`make run` and `comfymesh up` (both the launcher) on embedded defaults: each comes up, answers, and Ctrl-C or
SIGTERM leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service_runtime.processes import ManagedProcess, free_port, grpcurl_binary
from services.registry import PUBLIC_SERVICES
from tests.fixtures.auth import bearer_headers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line or environment mentions `marker` (our unique COMFYMESH_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


# The README's command as a newcomer types it, and the CLI's equivalent (which replaces itself with the launcher).
COMMANDS = {"make run": ["make", "--no-print-directory", "run"],
            "comfymesh up": [str(Path(sys.executable).with_name("comfymesh")), "up"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_embedded_platform_up_and_down(tmp_path: Path, command: str) -> None:
    home = tmp_path / "home"
    gateway_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYMESH_")}
    env.update({"COMFYMESH_HOME": str(home), "COMFYMESH_GATEWAY_PORT": str(gateway_port),
                "COMFYMESH_GATEWAY_ADMIN_PORT": str(free_port()), "COMFYMESH_CONTROL_PLANE_PORT": str(free_port()),
                "COMFYMESH_EXECUTOR_PORT": str(free_port()), "COMFYMESH_METRICS_PORT": "0"})
    launcher = ManagedProcess(COMMANDS[command], log_path=tmp_path / "launcher.log", env=env, cwd=ROOT,
                              name="launcher").start()
    try:
        launcher.wait_ready(lambda: "Press Ctrl-C" in launcher.log_tail(), 120)
        output = launcher.log_tail(100)
        assert f"http://127.0.0.1:{gateway_port}" in output
        assert httpx.get(f"http://127.0.0.1:{gateway_port}/healthz", timeout=5, trust_env=False).status_code == 200
        listed = subprocess.run([str(grpcurl_binary()), "-plaintext", f"127.0.0.1:{gateway_port}", "list"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.split()
        assert set(PUBLIC_SERVICES) <= set(listed)
        # First start: an admin key, printed once and kept in COMFYMESH_HOME/admin.key (0600); calls need it.
        key_file = home / "admin.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        admin_key = key_file.read_text().strip()
        assert admin_key in output and str(key_file) in output
        executions = f"http://127.0.0.1:{gateway_port}/v1/executions"
        assert httpx.get(executions, timeout=5, trust_env=False).status_code == 401
        assert httpx.get(executions, headers=bearer_headers(admin_key), timeout=5, trust_env=False).status_code == 200
        # Embedded defaults: SQLite and all state under COMFYMESH_HOME.
        assert (home / "comfymesh.db").exists() and (home / "seaweedfs").is_dir() and (home / "valkey").is_dir()
        assert len(_processes_mentioning(str(home))) >= 5  # launcher, valkey, weed, control plane, executor, envoy

        if command == "make run":
            # Ctrl-C in the terminal: the whole foreground process group (make and the launcher) gets SIGINT. The
            # launcher stops everything it started; make then ends by that signal, as make does.
            assert launcher.pid is not None
            os.killpg(launcher.pid, signal.SIGINT)
            assert launcher.wait(timeout=60) in (0, -signal.SIGINT, 128 + signal.SIGINT), launcher.log_tail()
        else:  # `comfymesh up` is the launcher itself (exec): a service manager's SIGTERM drains it, exit 0
            launcher.send_signal(signal.SIGTERM)
            assert launcher.wait(timeout=60) == 0, launcher.log_tail()
        assert "stopped." in launcher.log_tail()
        assert _processes_mentioning(str(home)) == []
    finally:
        launcher.stop(grace=5)
