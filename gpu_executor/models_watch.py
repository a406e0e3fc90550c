"""Noticing model files added to or removed from the models directory while the executor runs.

ComfyUI lists its model folders afresh whenever a client asks; the executor publishes its catalog (the loaders'
choices included) to the fleet, which validates submissions against it. So the executor compares a cheap signature
of the directory (names, sizes, modification times; no file is read) every few seconds and, when it changed, has
its engine list the catalog again and tells the fleet.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

Signature = frozenset[tuple[str, int, int]]


def models_signature(root: Path) -> Signature:
    """(relative path, size, mtime) of every file below `root` (links followed, as the loaders follow them)."""
    entries: set[tuple[str, int, int]] = set()
    for directory, _subdirectories, files in os.walk(root, followlinks=True):
        for name in files:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):  # removed meanwhile, or a dangling link
                status = os.stat(path)
                entries.add((os.path.relpath(path, root), status.st_size, status.st_mtime_ns))
    return frozenset(entries)
