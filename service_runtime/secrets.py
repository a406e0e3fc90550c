"""The deployment secret: from COMFYMESH_SECRET_KEY, or generated once into COMFYMESH_HOME/secret.key (mode 0600)."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile

from service_runtime.settings import Settings


def deployment_secret(settings: Settings) -> bytes:
    if settings.secret_key:
        return settings.secret_key.encode()
    if settings.environment == "production":
        raise RuntimeError("COMFYMESH_SECRET_KEY must be set in production (replicas must share it)")
    path = settings.home / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole to a temporary file, then linked into place: when several local processes start at once,
    # exactly one link succeeds and nobody ever reads a half-written key.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()
