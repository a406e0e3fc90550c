"""Logging: one JSON object per line (or plain text for humans), tagged with request and execution ids."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from service_runtime.telemetry.context import execution_id_var, request_id_var, rpc_method_var

# Attributes every LogRecord has; anything else passed through `extra=` is emitted as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats records as JSON lines for log shippers (Loki, CloudWatch, ...)."""

    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self._static = {"service": service, "instance": instance}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self._static,
        }
        for key, var in (("request_id", request_id_var), ("execution_id", execution_id_var),
                         ("rpc_method", rpc_method_var)):
            value = var.get()
            if value:
                entry[key] = value
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, still carrying the ids."""

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={v.get()}" for k, v in (("req", request_id_var), ("exec", execution_id_var)) if v.get())
        line = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S.%f')[:-3]} {record.levelname:<7} " \
               f"{record.name}: {record.getMessage()}" + (f" [{ids}]" if ids else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def configure_logging(service: str, level: str = "INFO", fmt: str = "json", instance: str = "") -> None:
    """Replaces the root handlers with one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, instance or default_instance()) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay at WARNING unless asked otherwise.
    for noisy in ("aiosqlite", "asyncio", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
