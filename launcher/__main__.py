"""`python -m launcher` (what `make run` runs): the whole platform on this machine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

from launcher.platform import LocalPlatform
from service_runtime.settings import get_settings
from service_runtime.telemetry.logs import configure_logging


def main() -> None:
    settings = get_settings()
    configure_logging("launcher", settings.log_level, "text")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    platform = LocalPlatform(settings)
    print(f"starting ComfyMesh (state in {settings.home.resolve()}) ...", flush=True)
    try:
        endpoints = platform.start()
    except Exception as exc:  # noqa: BLE001 - report and exit non-zero, nothing left running
        print(f"ComfyMesh failed to start: {exc}", file=sys.stderr)
        sys.exit(1)
    if endpoints.admin_key:
        key_line = f"{endpoints.admin_key}  (kept in {endpoints.admin_key_path})"
        auth = f' -H "authorization: Bearer $(cat {endpoints.admin_key_path})"'
    else:
        key_line, auth = "(authentication is off)", ""
    print(f"""
ComfyMesh is up.
  admin API key          {key_line}
  gateway (REST + gRPC)  http://{endpoints.gateway}        e.g. curl{auth} http://{endpoints.gateway}/v1/executions
                                                      grpcurl -plaintext{auth} {endpoints.gateway} list
  gateway admin          http://{endpoints.gateway_admin}
  control plane (gRPC)   {endpoints.control_plane}   metrics http://{endpoints.control_plane_metrics}/metrics
  CPU executor (gRPC)    {endpoints.executor}   metrics http://{endpoints.executor_metrics}/metrics
  redis                  {endpoints.redis_url}
  s3                     http://{endpoints.s3_endpoint}
  database               {endpoints.database_url}
  models                 {platform.models_dir(platform.settings)}/ (ComfyUI folders: checkpoints/, loras/, ...)
  logs                   {settings.home.resolve() / 'logs'}/
Press Ctrl-C to stop.""", flush=True)
    try:
        stop.wait()
    finally:
        print("stopping ...", flush=True)
        platform.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
