"""Identifiers: time-ordered, URL-safe, unguessable.

Execution ids sort by creation time (the first 48 bits are milliseconds since the epoch, like UUIDv7), which keeps
B-tree inserts local and makes `ORDER BY id` a creation order; the other 80 bits are random.
"""

from __future__ import annotations

import os
import time


def time_ordered_id() -> str:
    """32 lowercase hex characters: 12 of milliseconds, 20 random."""
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{os.urandom(10).hex()}"


def is_valid_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
